"""Every `ledgerlink` command's --help: it names the command as typed (`ledgerlink <command>`, never
`python3 -m ...`), its description is whole sentences, and every option and subcommand says what it does."""

import argparse

import pytest

from ledgerlink.tools import cli

COMMANDS = ["demo", *cli.PASSTHROUGH]


def _parsers_of(command: str, monkeypatch, capsys) -> tuple[str, list[argparse.ArgumentParser]]:
    made: list[argparse.ArgumentParser] = []
    init = argparse.ArgumentParser.__init__

    def record(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(argparse.ArgumentParser, "__init__", record)
    monkeypatch.setenv("COLUMNS", "120")
    with pytest.raises(SystemExit) as stopped:
        cli.main([command, "--help"])
    assert stopped.value.code in (0, None)
    return capsys.readouterr().out, made


def _undocumented(parser: argparse.ArgumentParser) -> list[str]:
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            missing += ["%s %s" % (parser.prog, choice.dest) for choice in action._choices_actions
                        if not choice.help]
        elif not action.help or action.help == argparse.SUPPRESS:
            missing.append("%s %s" % (parser.prog, "/".join(action.option_strings) or action.dest))
    return missing


@pytest.mark.parametrize("command", COMMANDS)
def test_help_names_the_command_and_documents_every_option(command, monkeypatch, capsys):
    out, parsers = _parsers_of(command, monkeypatch, capsys)
    assert out.startswith("usage: ledgerlink %s" % command), out[:200]
    parsers = [p for p in parsers if p.add_help]          # not parents of other parsers, nor cli.py's stand-ins
    assert [p.prog for p in parsers if p.prog.split()[0] != "ledgerlink"] == []
    own = [p for p in parsers if p.prog.split()[1:2] == [command]]     # cli.py also makes the other commands'
    assert own, "no parser made for %s" % command
    for parser in own:
        assert _undocumented(parser) == []
        if parser.description:
            text = " ".join(parser.description.split())
            assert text[-1] in ".)", "description stops mid-sentence: %r" % text[-60:]


def test_gateway_help_describes_its_config(capsys):
    with pytest.raises(SystemExit):
        cli.main(["gateway", "--help"])
    out = capsys.readouterr().out
    for key in ('"site"', '"mqtt"', '"store"', '"keys"', '"ledger"', '"trust"', '"limits"', '"batch"', '"http"',
                "verify_threads", "Relative paths are relative to the config file"):
        assert key in out, key
