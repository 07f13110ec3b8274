"""The supervisor of ``Stack``: a part that exits is started again after 0.5 s, the delay doubles for each
crash in a row up to 30 s and starts over after a stable run; a part that cannot start is tried again;
nothing is started once the stack is stopping; the status files say what runs."""

import json
import subprocess
import sys

import pytest

from ledgerlink.tools import stack as st


class FakeProc:
    def __init__(self, pid: int, returncode=None) -> None:
        self.pid = pid
        self.returncode = returncode

    def poll(self):
        return self.returncode


def _part(procs: list, starts: list, fail: list):
    def start() -> None:
        if fail:
            raise fail.pop(0)
        starts.append(1)
        procs[0] = FakeProc(100 + len(starts))
    return st._Part("gateway", st.Path("/tmp/gateway.log"), lambda: procs[0], start)


def test_backoff_doubles_per_crash_in_a_row_and_starts_over_after_a_stable_run():
    procs, starts, fail = [FakeProc(1)], [], []
    part = _part(procs, starts, fail)
    part.started = 0.0
    assert part.check(1.0) == []                                           # running
    procs[0].returncode = -9
    [line] = part.check(2.0)
    assert line == "gateway exited with status -9 (see /tmp/gateway.log); starting it again in 0.5 s"
    assert part.status()["state"] == "restarting" and part.status()["pid"] is None
    assert part.check(2.4) == [] and starts == []
    assert part.check(2.5) == ["gateway restarted (pid 101, restart 1)"]
    delays = []
    now = 2.5
    for _ in range(8):                                                    # crashes in a row: 1, 2, 4, ... 30 s
        procs[0].returncode = 1
        now += 0.1
        delays.append(float(part.check(now)[0].rsplit(" in ", 1)[1].split()[0]))
        now = part.due
        part.check(now)
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert part.restarts == 9 and part.last_exit == 1
    procs[0].returncode = -15                                             # after a stable run: 0.5 s again
    assert part.check(now + st.STABLE_S)[0].endswith("starting it again in 0.5 s")


def test_a_part_that_cannot_start_is_tried_again():
    procs, starts, fail = [FakeProc(1, returncode=-9)], [], [OSError("no such file")]
    part = _part(procs, starts, fail)
    part.started = 0.0
    part.check(1.0)
    [line] = part.check(1.5)
    assert line == "gateway did not start: no such file; starting it again in 1.0 s" and starts == []
    assert part.check(2.5) == ["gateway restarted (pid 101, restart 2)"]


def test_supervise_restarts_a_broker_and_writes_the_status(tmp_path):
    s = st.Stack(tmp_path, site="sv")
    s.broker_kind = "embedded"
    s.broker = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    s.broker.wait(20)
    spawned = []
    s._spawn_broker = lambda: (spawned.append(1), setattr(s, "broker", FakeProc(4242)))
    [line] = s.supervise(now=10.0)
    assert line.startswith("the embedded MQTT broker exited with status 3 (see %s)" % (tmp_path / "mqtt_broker.log"))
    assert s.supervise(now=10.6) == ["the embedded MQTT broker restarted (pid 4242, restart 1)"] and spawned == [1]
    status = json.loads((tmp_path / "status.json").read_text())["parts"]
    assert status == [{"part": "broker", "name": "the embedded MQTT broker", "pid": 4242, "state": "running",
                       "restarts": 1, "last_exit": 3}]
    prom = (tmp_path / "status.prom").read_text()
    assert 'ledgerlink_site_restarts_total{part="broker"} 1' in prom and 'ledgerlink_site_part_up{part="broker"} 1' in prom
    s.stopping = True
    s.broker = FakeProc(4242, returncode=-9)
    assert s.supervise(now=20.0) == []                                    # the operator is stopping the site


def test_up_status_prints_the_supervisors_view(tmp_path, capsys):
    from ledgerlink.tools import up

    (tmp_path / "up.json").write_text(json.dumps({"data_dir": "site", "site": "st"}))
    assert up.main(["--status", "--config", str(tmp_path / "up.json")]) == 1
    assert "no site status in %s" % (tmp_path / "site" / "status.json") in capsys.readouterr().err
    (tmp_path / "site").mkdir()
    s = st.Stack(tmp_path / "site", site="st")
    s.broker_kind = "mosquitto"
    s.broker = FakeProc(77, returncode=-9)
    s._spawn_broker = lambda: setattr(s, "broker", FakeProc(78))
    s.supervise(now=1.0)
    assert up.main(["--status", "--config", str(tmp_path / "up.json")]) == 1     # restarting
    assert "mosquitto            restarting pid -        restarts 0, last exit status -9" in capsys.readouterr().out
    s.supervise(now=2.0)
    assert up.main(["--status", "--config", str(tmp_path / "up.json")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("site 'st', status written ") and "mosquitto            running    pid 78" in out
