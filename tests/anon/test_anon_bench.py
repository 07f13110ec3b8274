"""The anonymous-session bench command runs and prints its wire table (the board parts run in
``tests/anon/test_anon_in_micropython.py``'s runtime and by hand: they take a QEMU board)."""

from ledgerlink.tools import anon_bench


def test_wire_table_prints_the_sizes_of_a_checked_exchange(capsys):
    assert anon_bench.main(["--no-qemu", "--no-board32"]) == 0
    out = capsys.readouterr().out
    inp = anon_bench.Inputs()
    total = len(inp.request.payload) + len(inp.answer)
    assert any(line.startswith("anonymous: device <-> fog, total") and line.split()[-1] == str(total)
               for line in out.splitlines())
    assert "EDHOC" in out and "ECQV: total" in out


def test_bench_messages_have_the_sizes_of_a_real_fogs(tmp_path):
    from tests.anon.site import Site

    inp = anon_bench.Inputs()
    out = Site(tmp_path).session("devA")
    assert [len(p) for _, p in out.broker] == [len(inp.request.payload), len(inp.answer), len(inp.grant)]
