"""`ledgerlink demo --scenario spinning` runs end to end and exits 0 only when every check held: with the
combing machine as the MicroPython board client on board32, and as a CPython device where no board
runtime is found."""

from __future__ import annotations

import pytest

from ledgerlink.tools import cli, demo_spinning


@pytest.mark.slow
def test_spinning_scenario_with_the_board_comber(capsys):
    assert cli.main(["demo", "--scenario", "spinning", "--site", "spin", "--broker", "mosquitto"]) == 0
    out = capsys.readouterr().out
    assert "summary: 17 checks, 0 failed" in out
    assert "combing machine (MicroPython, board32) queries the carder" in out
    assert "[ok] carding controller checks in: config kept" in out
    assert "[ok] lap controller's app update fails its check and rolls back" in out
    assert "trace of combed-" in out and "combed yarn <- carded yarn <- sliver <- cotton bale" in out


@pytest.mark.slow
def test_spinning_scenario_on_cpython_and_an_update_hook_that_fails_is_reported(capsys, monkeypatch):
    calls = []

    def update_step(site):
        calls.append(site)
        return [("update hook ran", True, ""), ("an update hook check that fails", False, "on purpose")]

    monkeypatch.setattr(demo_spinning, "UPDATE_STEPS", [update_step])
    assert demo_spinning.run_spinning(site_name="spin2", broker="embedded", board="no") == 1
    out = capsys.readouterr().out
    assert len(calls) == 1
    assert "combing machine (CPython: no board32 here) queries the carder" in out
    assert "summary: 14 checks, 1 failed: an update hook check that fails" in out
