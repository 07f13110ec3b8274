"""``Stack``: broker, ledger cluster and gateway start, carry a registered device's reading through to the
verified topic, ban it on the ledger, stop without leftovers and restart on the same data directory; the
same site on the embedded MQTT broker gives a device its receipt; the broker choice."""

import os
import time

import pytest

from ledgerlink.core import cbor
from ledgerlink.device.core import DeviceCore, MemoryCounter, SequenceCounter
from ledgerlink.protocol.stored_ack import KIND_STORED
from ledgerlink.tools import stack as stack_mod
from ledgerlink.tools.stack import BrokerMissing, Stack, StackError, choose_broker
from tests.mqtt_helpers import subscriber

pytestmark = pytest.mark.slow


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True



def test_start_reading_ban_stop_and_restart(tmp_path):
    lines: list[str] = []
    s = Stack(tmp_path / "site", site="t1", limits={"registry_ttl_ms": 300}, progress=lines.append)
    s.start()
    try:
        pids = s.pids()
        assert len(pids) == 6 and all(_alive(p) for p in pids)
        assert [l.split(":")[0] for l in lines] == ["MQTT broker", "ledger", "gateway %s" % s.gateway_id.hex()]
        assert len(s.validators) == 4 and s.chain_id

        dev = DeviceCore(bytes(range(1, 33)), "t1", SequenceCounter(MemoryCounter()), s.chain_id, s.validators)
        req = dev.registration_request(int(time.time() * 1000), attributes={"name": "probe"}).payload
        [res] = s.register([req])
        assert res["status"] == "committed" and res["code"] == 0
        with pytest.raises(StackError, match="registration refused"):
            s.register([req])                                   # already-exists

        app, q = subscriber(s.broker_port, "ll/t1/verified/+", "test-stack-app",
                            s.access.add("test-stack-app", "operator"))
        try:
            out = dev.reading({"t": 21.5}, int(time.time() * 1000))
            app.publish(out.topic, out.payload, qos=1).wait_for_publish(5)
            topic, payload = q.get(timeout=15)
        finally:
            app.loop_stop()
            app.disconnect()
        v = cbor.loads(payload)
        assert topic == "ll/t1/verified/" + dev.device_id.hex()
        assert v[1] == dev.device_id and v[2] == out.seq and v[4] == {"t": 21.5} and v[5] == out.frame_hash

        ban = s.ban(dev.device_id, "probe ban")
        record = cbor.loads(s.ledger.record(1, dev.device_id)["proof"][3])
        assert record[5] == 2 and record[9][3] == "probe ban"
        assert s.height() >= ban["height"]
        with pytest.raises(StackError, match="ban refused"):
            s.ban(dev.device_id, "again")                       # wrong-status
        height = s.height()
    finally:
        s.stop()
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids)

    again = Stack(tmp_path / "site", site="t1")                # same keys, chain and blocks
    again.start()
    try:
        assert again.chain_id == s.chain_id and again.gateway_id == s.gateway_id
        assert again.height() >= height
    finally:
        again.stop()


def test_mosquitto_asked_for_but_missing_nothing_starts(tmp_path, monkeypatch):
    monkeypatch.setattr(stack_mod, "find_mosquitto", lambda: None)
    s = Stack(tmp_path / "site", broker="mosquitto")
    with pytest.raises(BrokerMissing, match="apt-get install mosquitto"):
        s.start()
    assert s.pids() == [] and not (tmp_path / "site").exists()


def test_broker_choice(monkeypatch):
    monkeypatch.delenv(stack_mod.BROKER_ENV, raising=False)
    assert choose_broker("auto") == ("mosquitto", stack_mod.find_mosquitto())
    assert choose_broker("embedded") == ("embedded", None)
    monkeypatch.setenv(stack_mod.BROKER_ENV, "embedded")
    assert choose_broker() == ("embedded", None)
    assert choose_broker("mosquitto")[0] == "mosquitto"
    monkeypatch.setattr(stack_mod, "find_mosquitto", lambda: None)
    monkeypatch.delenv(stack_mod.BROKER_ENV)
    assert choose_broker() == ("embedded", None)              # nothing installed: the embedded broker
    with pytest.raises(BrokerMissing):
        choose_broker("mosquitto")
    with pytest.raises(StackError, match="unknown MQTT broker 'rabbit'"):
        choose_broker("rabbit")


def test_embedded_broker_site_gives_a_device_its_receipt(tmp_path):
    lines: list[str] = []
    s = Stack(tmp_path / "site", site="emb", broker="embedded", progress=lines.append)
    s.start()
    try:
        pids = s.pids()
        assert len(pids) == 6
        assert lines[0].startswith("MQTT broker: embedded (ledgerlink.tools.mqtt_broker")
        assert b"ledgerlink.tools.mqtt_broker" in open("/proc/%d/cmdline" % s.broker.pid, "rb").read()
        dev = DeviceCore(bytes(range(2, 34)), "emb", SequenceCounter(MemoryCounter()), s.chain_id, s.validators,
                         gateway_keys={s.gateway_id: s.public_key("gateway")})
        s.register([dev.registration_request(int(time.time() * 1000), attributes={"name": "probe"}).payload])
        down = "ll/emb/dev/%s/down" % dev.device_id.hex()
        app, q = subscriber(s.broker_port, down, "test-stack-app", s.device_login(dev.device_id))
        try:
            out = dev.reading({"t": 20.5}, int(time.time() * 1000))
            app.publish(out.topic, out.payload, qos=1).wait_for_publish(5)
            deadline = time.monotonic() + 30
            result = None
            while result is None or type(result).__name__ != "ReceiptResult":
                topic, payload = q.get(timeout=max(0.1, deadline - time.monotonic()))
                assert topic == down
                result = dev.handle_down(payload, int(time.time() * 1000))
        finally:
            app.loop_stop()
            app.disconnect()
        assert result.valid, result.reason
        assert result.seq == out.seq and result.frame_hash == out.frame_hash and result.height >= 1
    finally:
        s.stop()
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids)


def test_failed_start_stops_what_started(tmp_path, monkeypatch):
    def broken_gateway(self, timeout):
        raise StackError("gateway refused to start")
    monkeypatch.setattr(Stack, "_start_gateway", broken_gateway)
    s = Stack(tmp_path / "site")
    with pytest.raises(StackError, match="gateway refused"):
        s.start()
    procs = [s.broker] + list(s.cluster.procs.values())
    assert len(procs) == 5 and all(p.poll() is not None for p in procs)


def test_a_ban_reaches_the_gateway_within_a_second_with_default_limits(tmp_path):
    s = Stack(tmp_path / "site", site="bn")                      # registry_ttl_ms at its default (60 s)
    s.start()
    try:
        dev = DeviceCore(bytes(range(3, 35)), "bn", SequenceCounter(MemoryCounter()), s.chain_id, s.validators)
        s.register([dev.registration_request(int(time.time() * 1000), attributes={"name": "probe"}).payload])
        app, q = subscriber(s.broker_port, "ll/bn/dev/%s/down" % dev.device_id.hex(), "test-ban-app",
                            s.access.add("test-ban-app", "operator"))     # the device's own account is disabled by the ban
        try:
            def answer(out) -> int:
                app.publish(out.topic, out.payload, qos=1).wait_for_publish(5)
                while True:
                    _, payload = q.get(timeout=15)
                    reply = cbor.loads(payload)
                    if reply[0] != KIND_STORED and reply[1] == out.frame_hash:      # a receipt or a refusal
                        return reply[0] if reply[0] != 2 else -reply[2]

            assert answer(dev.reading({"t": 1}, int(time.time() * 1000))) == 1          # a receipt
            s.ban(dev.device_id, "probe ban")
            time.sleep(1.0)
            assert answer(dev.reading({"t": 2}, int(time.time() * 1000))) == -4         # banned-device
        finally:
            app.loop_stop()
            app.disconnect()
    finally:
        s.stop()


class _Stop(Exception):
    pass


def test_a_stop_signal_while_spawning_is_handled_after_the_caller_keeps_the_child(tmp_path, monkeypatch):
    """A handler that raises must not run inside ``Popen`` (its fork hooks would drop the exception),
    and the caller must hold the started process before it runs."""
    import signal
    import subprocess
    import sys

    real_popen = subprocess.Popen
    seen: list[str] = []

    def popen_with_sigint(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        seen.append("popen")
        return real_popen(*args, **kwargs)

    def handler(signum, frame):
        seen.append("handler")
        raise _Stop()

    kept: list = []
    monkeypatch.setattr(stack_mod.subprocess, "Popen", popen_with_sigint)
    previous = signal.signal(signal.SIGINT, handler)
    try:
        with open(tmp_path / "log", "wb") as log, pytest.raises(_Stop):
            stack_mod.spawn([sys.executable, "-c", "print('child ran')"], log,
                            lambda p: (kept.append(p), seen.append("kept")))
        assert signal.getsignal(signal.SIGINT) is handler
    finally:
        signal.signal(signal.SIGINT, previous)
    assert seen == ["popen", "kept", "handler"]
    assert kept[0].wait(20) == 0
    assert (tmp_path / "log").read_bytes() == b"child ran\n"


def test_a_spawned_child_gets_stop_signals(tmp_path):
    import signal
    import sys

    kept: list = []
    with open(tmp_path / "log", "wb") as log:
        p = stack_mod.spawn([sys.executable, "-c", "import signal; print(sorted(int(s) for s in "
                             "signal.pthread_sigmask(signal.SIG_BLOCK, [])), signal.getsignal(signal.SIGTERM))"],
                            log, kept.append)
    assert kept == [p] and p.wait(20) == 0
    blocked, handler = (tmp_path / "log").read_text().rsplit(" ", 1)
    assert str(int(signal.SIGINT)) not in blocked.strip("[]").split(", ")
    assert str(int(signal.SIGTERM)) not in blocked.strip("[]").split(", ")
    assert int(handler) == int(signal.SIG_DFL)


def test_a_gateway_that_does_not_subscribe_is_stopped(tmp_path, monkeypatch):
    kept: list = []
    real_spawn = stack_mod.spawn

    def spawn_sleeper(cmd, log, keep):
        import sys
        return real_spawn([sys.executable, "-c", "import time; time.sleep(60)"], log,
                          lambda p: (kept.append(p), keep(p)))

    monkeypatch.setattr(stack_mod, "spawn", spawn_sleeper)
    with pytest.raises(StackError, match="did not subscribe"):
        stack_mod.launch_gateway({}, tmp_path, 0.5)
    assert kept[0].poll() is not None


@pytest.mark.slow
def test_a_crashed_gateway_starts_again_from_its_warm_standby(tmp_path):
    """The supervisor keeps an imported gateway interpreter waiting; a crashed gateway is started from it (the
    restart skips the interpreter's start and imports), it subscribes, and stop() ends the standby too."""
    import signal

    s = Stack(tmp_path / "site", site="ws", nodes=1)
    standbys: list[int] = []
    try:
        s.start()
        deadline = time.monotonic() + 30
        while not s.standby_pids():
            assert time.monotonic() < deadline, "no warm standby"
            s.supervise()
            time.sleep(0.1)
        standby = s.standby_pids()[0]
        standbys.append(standby)
        os.kill(s.gateway.pid, signal.SIGKILL)
        lines: list[str] = []
        deadline = time.monotonic() + 30
        while not any("subscribed again" in line for line in lines):
            assert time.monotonic() < deadline, lines
            lines += s.supervise()
            time.sleep(0.05)
        assert s.gateway.pid == standby, lines
        deadline = time.monotonic() + 30
        while not s.standby_pids():                             # and a new standby for the next crash
            assert time.monotonic() < deadline
            s.supervise()
            time.sleep(0.1)
        standbys += s.standby_pids()
    finally:
        s.stop()
    deadline = time.monotonic() + 10
    while any(_running(p) for p in standbys) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_running(p) for p in standbys)


def _running(pid: int) -> bool:
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
