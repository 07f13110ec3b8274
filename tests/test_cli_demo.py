"""`ledgerlink demo`: the whole system as a subprocess (summary, ban, receipts, Ctrl-C, no leftover
processes) and the in-process library example (`--library`) on both crypto backends."""

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ledgerlink.tools import demo as demo_mod
from ledgerlink.tools.cli import main

CLI = [sys.executable, "-m", "ledgerlink.tools.cli"]


@pytest.mark.parametrize("backend", ["portable", "cpython"])
def test_demo_runs_every_step(backend, capsys):
    assert main(["demo", "--backend", backend, "--readings", "3"]) == 0
    out = capsys.readouterr().out
    assert f"crypto backend: {backend}" in out
    assert out.count("[ok]") == 11
    assert "altered reading is refused" in out and "refused: " in out
    assert "all steps passed" in out


def test_library_flag_runs_the_library_example(capsys):
    assert main(["demo", "--library", "--readings", "2"]) == 0
    assert "all steps passed" in capsys.readouterr().out


def test_console_entry_point_without_command_prints_help():
    result = subprocess.run(CLI, capture_output=True, text=True)
    assert result.returncode == 2
    assert "demo" in result.stdout


def test_bad_argument_is_a_usage_error():
    result = subprocess.run(CLI + ["demo", "--readings", "0"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "--readings must be at least 1" in result.stderr
    result = subprocess.run(CLI + ["demo", "--devices", "1"], capture_output=True, text=True)
    assert result.returncode == 2 and "--devices must be at least 2" in result.stderr
    result = subprocess.run(CLI + ["demo", "--site", "Bad Site"], capture_output=True, text=True)
    assert result.returncode == 2 and "--site must match" in result.stderr


def test_mosquitto_asked_for_but_missing_one_line_and_exit_2(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr("ledgerlink.tools.stack.find_mosquitto", lambda: None)
    assert demo_mod.run_live(devices=2, duration=1, data=str(tmp_path / "d"), broker="mosquitto") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["--broker mosquitto needs mosquitto: install it (apt-get install mosquitto) "
                   "or use --broker embedded"]
    monkeypatch.setenv("LEDGERLINK_BROKER", "rabbit")
    assert demo_mod.run_live(devices=2, duration=1, data=str(tmp_path / "d")) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "unknown MQTT broker 'rabbit' (choose auto, mosquitto, embedded)"]
    assert not (tmp_path / "d").exists()


# --- the live system as a subprocess ------------------------------------------------------------------


def _processes_under(path: Path) -> list[int]:
    """Processes whose command line names ``path`` (broker, ledger nodes and gateway of a run)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmd = Path("/proc", entry, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in cmd:
            found.append(int(entry))
    return found


class Run:
    """``ledgerlink demo`` in a subprocess; its stdout lines arrive in ``lines``."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(CLI + ["demo"] + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, bufsize=1, env=None if env is None else {**os.environ, **env})
        self.q: queue.Queue = queue.Queue()
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.q.put(line.rstrip("\n"))
        self.q.put(None)

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                m = re.search(pattern, line)
                if m:
                    return m
            try:
                line = self.q.get(timeout=0.1)
            except queue.Empty:
                continue
            if line is None:
                break
            self.lines.append(line)
        raise AssertionError("no %r in output:\n%s" % (pattern, "\n".join(self.lines)))

    def finish(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        while True:
            line = self.q.get(timeout=5)
            if line is None:
                return rc
            self.lines.append(line)

    def stop(self) -> None:
        """SIGINT, then SIGKILL (its children get SIGTERM when it dies)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def out(self) -> str:
        return "\n".join(self.lines)


SUMMARY = (r"summary: accepted (\d+)  refused (\d+)(?: \(banned-device (\d+)\))?  receipts verified (\d+)  "
           r"ledger height (\d+)")


@pytest.mark.slow
def test_live_demo_runs_bans_and_stops_cleanly(tmp_path):
    data = tmp_path / "run"
    run = Run(["--devices", "4", "--duration", "10", "--data", str(data)])
    try:
        rc = run.finish(60)
    finally:
        run.stop()
    out = run.out
    assert rc == 0, out
    assert "mosquitto on 127.0.0.1:" in out and "4 PBFT nodes" in out and "subscribed to ll/demo/dev/+/up" in out
    assert re.search(r"threshold headers: group key [0-9a-f]{66}", out), out
    assert "registered 4 devices: admin-signed tx-register" in out
    assert "sessions: 2/2 devices hold an ECQV session certificate" in out
    assert "mosquitto_sub -h 127.0.0.1 -p" in out and "'ll/demo/verified/+'" in out
    ban = re.search(r"banned (dev\d\d) \((\w{32})\): admin-signed tx-ban 'demo: tampering suspected'", out)
    assert ban, out
    accepted, refused, banned_refusals, receipts, height = map(int, re.search(SUMMARY, out).groups("0"))
    assert accepted > 0 and receipts <= accepted and height > 0
    assert refused == banned_refusals
    assert re.search(r"\[ok\] banned device %s cut off by the broker \d+ ms after the ban; refused %d times with "
                     r"banned-device \(4\)" % (ban.group(1), banned_refusals), out), out
    assert re.search(r"\[ok\] receipts verified (\d+) of \1 accepted", out), out
    assert "no processes left" in out and "[ok] clean shutdown" in out and "FAILED" not in out
    assert out.rstrip().endswith("demo passed: every step worked")
    assert _processes_under(data) == []
    assert (data / "ledger" / "cluster.json").exists()            # --data is kept


@pytest.mark.slow
def test_live_demo_on_the_embedded_broker(tmp_path):
    data = tmp_path / "run"
    run = Run(["--devices", "4", "--duration", "8", "--data", str(data), "--broker", "embedded"])
    try:
        rc = run.finish(60)
    finally:
        run.stop()
    out = run.out
    assert rc == 0, out
    assert re.search(r"MQTT broker: embedded \(ledgerlink.tools.mqtt_broker, MQTT 5 and 3.1.1\) on 127.0.0.1:\d+",
                     out), out
    assert "mosquitto" not in out
    accepted, refused, banned_refusals, receipts, height = map(int, re.search(SUMMARY, out).groups("0"))
    assert accepted > 0 and receipts <= accepted and refused == banned_refusals
    assert "no processes left" in out and out.rstrip().endswith("demo passed: every step worked")
    assert _processes_under(data) == []
    assert "listening on 127.0.0.1:" in (data / "mqtt_broker.log").read_text()


@pytest.mark.slow
def test_ctrl_c_during_the_run_stops_everything(tmp_path):
    data = tmp_path / "run"
    run = Run(["--devices", "2", "--duration", "0", "--data", str(data)])
    try:
        run.wait_for(r"sessions: 1/1", 40)
        pids = [p for p in _processes_under(data) if p != run.proc.pid]
        assert len(pids) == 6, pids                                     # broker, 4 nodes, gateway
        run.proc.send_signal(signal.SIGINT)
        rc = run.finish(40)
    finally:
        run.stop()
    out = run.out
    assert rc == 130, out
    assert "SIGINT: stopping" in out and "no processes left" in out
    assert "interrupted before every step ran" in out and "Traceback" not in out
    assert _processes_under(data) == []


@pytest.mark.slow
def test_ctrl_c_after_the_ban_passes(tmp_path):
    data = tmp_path / "run"
    run = Run(["--devices", "2", "--duration", "0", "--data", str(data)])
    try:
        run.wait_for(r"banned dev01", 40)
        run.wait_for(r"broker account of dev01 disabled: disconnected", 20)
        run.proc.send_signal(signal.SIGINT)
        rc = run.finish(40)
    finally:
        run.stop()
    out = run.out
    assert rc == 0, out
    assert "SIGINT: stopping" in out and "[ok] banned device dev01 cut off by the broker" in out
    assert "demo passed: every step worked" in out
    assert _processes_under(data) == []


@pytest.mark.slow
def test_ctrl_c_while_starting_stops_what_started(tmp_path):
    data = tmp_path / "run"
    run = Run(["--devices", "2", "--duration", "0", "--data", str(data)])
    try:
        run.wait_for(r"MQTT broker: mosquitto", 40)
        run.proc.send_signal(signal.SIGINT)
        rc = run.finish(40)
    finally:
        run.stop()
    out = run.out
    assert rc == 130, out
    assert "SIGINT: stopping" in out and "no processes left" in out and "Traceback" not in out
    assert _processes_under(data) == []


def test_a_signal_whose_raise_was_swallowed_still_stops_the_start_up():
    from ledgerlink.tools import demo

    signals = demo._Signals()
    signals.check()                                          # nothing received: no raise
    try:
        signals._handle(signal.SIGINT, None)                 # as if raised inside a fork hook, where
    except demo._Interrupted:                                # Python prints and drops the exception
        pass
    with pytest.raises(demo._Interrupted):
        signals.check()
    signals.raising = False                                  # after start-up the flag is read instead
    signals.check()
    assert signals.event.is_set() and signals.received == signal.SIGINT
