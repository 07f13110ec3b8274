"""Fail-closed counters, session records and command sequence numbers, on both clients.

The same faults on the CPython SDK (``FileCounter`` + ``DeviceCore``) and on the board client
(``micropython/ledgerlink_client`` run under CPython on ``FileStorage``), against the gateway's own
checks (``GatewayCore``): the sequence-counter file deleted, truncated, bit-flipped or rolled back to
an older copy never makes a (session id, Partial IV) pair repeat, the stored session is dropped and a
new one opened, and a replay refusal does not leave the device stuck. Command sequence numbers
survive a restart, a lost command store refuses the commands taken before it, and not-after is capped.
The board client runs the same faults inside MicroPython in tests/micropython/test_counter_faults_in_vm.py.
"""

from __future__ import annotations

import os
import shutil
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledgerlink.core import cbor, cose
from ledgerlink.protocol import commands
from ledgerlink.protocol import device_protocol as dp
from ledgerlink.device import core as dc
from ledgerlink.device.keystore import FileCounter, FileRecord
from ledgerlink.gateway import checks as c

from tests.conftest import PROJECT_ROOT
from tests.device.helpers import CRYPTO, NOW, BoardLink, Clock, Env

sys.path.insert(0, str(PROJECT_ROOT / "micropython"))

from ledgerlink_client import device as board  # noqa: E402
from ledgerlink_client.queue import FileStorage  # noqa: E402

DAY_MS = 24 * 3600 * 1000
FAULTS = ("deleted", "truncated", "bit-flipped")


def damage(path, fault: str) -> None:
    if fault == "deleted":
        os.remove(path)
    elif fault == "truncated":
        with open(path, "rb") as f:
            data = f.read()
        with open(path, "wb") as f:
            f.write(data[:len(data) // 2])
    else:
        with open(path, "rb") as f:
            data = bytearray(f.read())
        data[1] ^= 0x04
        with open(path, "wb") as f:
            f.write(bytes(data))


@pytest.fixture()
def env() -> Env:
    return Env()


def nonce_pairs(frames) -> list:
    """(session id, Partial IV) of every distinct session-encrypted frame (a frame sent again is one frame)."""
    out = []
    for frame in dict.fromkeys(frames):
        if frame[:1] == b"\xd0":
            msg = cose.decode_encrypt0(frame)
            out.append((msg.kid, msg.partial_iv))
    return out


# --- CPython SDK ------------------------------------------------------------------------------------


class SdkDevice:
    """A CPython device whose counter and session record live in ``folder``; ``restart`` reopens them."""

    def __init__(self, env: Env, folder) -> None:
        self.env = env
        self.folder = folder
        self.sent: list[bytes] = []
        self.restored = False
        self.restart()

    def restart(self) -> None:
        counter = dc.SequenceCounter(FileCounter(os.path.join(self.folder, "seq")), reserve=16)
        self.core = dc.DeviceCore(self.env.net["sensor"].priv, "plant-1", counter, self.env.net.chain_id,
                                  self.env.ledger.keys, ca_public=self.env.ca_public, backend=CRYPTO)
        record = FileRecord(os.path.join(self.folder, "session"))
        raw = record.load()
        self.restored = False
        if raw is not None:
            try:
                self.core.restore_session(raw, NOW)
                self.restored = True
            except dp.LedgerlinkError:
                record.remove()

    def open_session(self) -> None:
        req = self.core.session_request(NOW)
        [reply] = [e for e in self.env.feed(req.topic, req.payload) if isinstance(e, c.Reply)]
        assert isinstance(self.core.handle_down(reply.payload, NOW), dc.SessionOpened)
        FileRecord(os.path.join(self.folder, "session")).store(self.core.session_record())

    def publish(self, i: int) -> list:
        out = self.core.reading({"i": i}, NOW, dc.MODE_SESSION)
        self.sent.append(out.payload)
        effects = self.env.feed(out.topic, out.payload)
        for e in effects:
            if isinstance(e, c.Refuse):
                result = self.core.handle_down(e.reply(), NOW)
                assert isinstance(result, dc.Refused)
                if self.core.session is None:
                    os.remove(os.path.join(self.folder, "session"))
        return effects


@pytest.mark.parametrize("fault", FAULTS)
def test_sdk_lost_counter_drops_the_session_and_never_repeats_a_nonce(env, tmp_path, fault):
    dev = SdkDevice(env, str(tmp_path))
    dev.open_session()
    first = dev.core.session.keys.session_id
    for i in range(3):
        assert isinstance(dev.publish(i)[0], c.Accept)
    damage(tmp_path / "seq", fault)
    dev.restart()                                       # a reset: the counter restarts, the session must not
    assert dev.core.counter.lost and not dev.restored and dev.core.session is None
    assert not (tmp_path / "session").exists()
    # the gateway saw seqs 1..3: the new session's seq 1 is refused as a replay, which drops that
    # session and moves the counter past it; the next session's readings are taken
    opened, accepted = [], []
    for i in range(8):
        if dev.core.session is None:
            dev.open_session()
            opened.append(dev.core.session.keys.session_id)
        accepted += [e.seq for e in dev.publish(10 + i) if isinstance(e, c.Accept)]
    assert len(opened) == 2 and first not in opened and len(accepted) == 7 and accepted[0] > 3
    pairs = nonce_pairs(dev.sent)
    assert len(pairs) == len(set(pairs)) == 11


def test_sdk_session_record_below_its_counter_mark_is_refused(env, tmp_path):
    dev = SdkDevice(env, str(tmp_path))
    for i in range(20):
        dev.core.reading({"i": i}, NOW)                 # signed readings move the counter mark to 32
    old = tmp_path / "seq.old"
    shutil.copy(tmp_path / "seq", old)
    for i in range(20):
        dev.core.reading({"i": i}, NOW)
    dev.open_session()                                  # opened at counter mark 40
    dev.restart()
    assert dev.restored and dev.core.session.mark == 40
    os.replace(old, tmp_path / "seq")                   # an older copy of the counter (restored backup)
    dev.restart()
    assert not dev.core.counter.lost and dev.core.counter.last == 32
    assert not dev.restored and dev.core.session is None and not (tmp_path / "session").exists()


def test_sdk_damaged_or_old_session_records_are_refused(env, tmp_path):
    dev = SdkDevice(env, str(tmp_path))
    dev.open_session()
    record = dev.core.session_record()
    body = cbor.loads(record[:-4])
    assert body[0] == 2 and body[5] == 0                # [version 2, cert, key, base-iv, gateway-id, mark]
    for bad in (record[:-1], record[:10], b"",
                cbor.dumps(body[:5]) + CRYPTO.sha256(cbor.dumps(body[:5]))[:4],            # version-1 shape
                cbor.dumps([1] + body[1:5]) + CRYPTO.sha256(cbor.dumps([1] + body[1:5]))[:4]):
        with pytest.raises(dp.LedgerlinkError):
            dev.core.restore_session(bad, NOW)
    with pytest.raises(dc.DeviceError):
        dev.core.restore_session(record, (dev.core.session.valid_until_s + 1) * 1000)     # expired
    with pytest.raises(dc.DeviceError, match="counter was lost"):
        dev.core.restore_session(record, NOW)           # the counter of this start was lost (a first start)
    sid = dev.core.session.keys.session_id
    dev.core.reading({"i": 0}, NOW)                     # stores the counter
    dev.restart()
    assert dev.restored and dev.core.session.keys.session_id == sid


def test_sdk_counter_file_faults_restart_the_sequence_and_are_rewritten(tmp_path):
    path = tmp_path / "seq"
    counter = dc.SequenceCounter(FileCounter(path), reserve=4)
    assert counter.lost                                 # no file yet: a first start counts as lost
    assert [counter.next() for _ in range(6)] == [1, 2, 3, 4, 5, 6]
    again = dc.SequenceCounter(FileCounter(path), reserve=4)
    assert not again.lost and again.last == 8
    for fault in FAULTS:
        damage(path, fault)
        lost = dc.SequenceCounter(FileCounter(path), reserve=4)
        assert lost.lost and lost.last == 0 and lost.next() == 1
        assert FileCounter(path).load() == 4
    os.chmod(path, 0o644)                               # writable by others: not trusted, treated as lost
    assert FileCounter(path).load() is None


def test_sdk_replay_refusal_drops_the_session_and_moves_the_counter(env):
    dev = env.device()
    env.gw.restore_window(dev.device_id, 1000, NOW)     # the gateway saw seqs up to 1000 of this device
    opened = 0
    accepted = []
    for i in range(12):
        if dev.session is None:
            req = dev.session_request(NOW)
            [reply] = [e for e in env.feed(req.topic, req.payload) if isinstance(e, c.Reply)]
            dev.handle_down(reply.payload, NOW)
            opened += 1
        out = dev.reading({"i": i}, NOW, dc.MODE_SESSION)
        for e in env.feed(out.topic, out.payload):
            if isinstance(e, c.Refuse):
                assert e.code == c.REPLAY
                result = dev.handle_down(e.reply(), NOW)
                assert isinstance(result, dc.Refused) and result.session_dropped and dev.session is None
                assert dev.counter.last > out.seq
            elif isinstance(e, c.Accept):
                accepted.append(e.seq)
    assert accepted and accepted[0] > 900
    assert opened <= 6                                  # the skip doubles: 64, 128, ... reaches 1000 in 5 steps


def test_sdk_replay_refusal_of_a_signed_reading_keeps_the_session(env):
    dev = env.device()
    req = dev.session_request(NOW)
    [reply] = [e for e in env.feed(req.topic, req.payload) if isinstance(e, c.Reply)]
    dev.handle_down(reply.payload, NOW)
    out = dev.reading({"i": 1}, NOW)
    refusal = cbor.dumps({0: 2, 1: out.frame_hash, 2: c.REPLAY, 3: "seq 1 already seen"})   # a duplicate
    result = dev.handle_down(refusal, NOW)
    assert isinstance(result, dc.Refused) and not result.session_dropped and dev.session is not None


# --- commands -----------------------------------------------------------------------------------


def command_device(env: Env, store, now: int) -> dc.DeviceCore:
    dev = env.device("actuator")
    dev.update_controller(env.ledger.device_proof(env.net["controller"].id))
    dev.open_commands(store, now)
    return dev


def test_sdk_command_seqs_survive_a_restart(env, tmp_path):
    path = str(tmp_path / "commands")
    dev = command_device(env, FileRecord(path), NOW - DAY_MS)
    target = dev.device_id
    cmd = env.command("controller", target, 5, "open-valve", {"pct": 30}, NOW + 5000)
    assert dev.handle_command(dev.cmd_topic, cmd, NOW).accepted
    again = command_device(env, FileRecord(path), NOW + 1000)
    replay = again.handle_command(again.cmd_topic, cmd, NOW + 1000)
    assert not replay.accepted and "already used" in replay.reason
    assert again.handle_command(again.cmd_topic, env.command("controller", target, 6, "x", None, NOW + 9000),
                                NOW + 1000).accepted


@pytest.mark.parametrize("fault", FAULTS)
def test_sdk_lost_command_store_refuses_commands_from_before_the_loss(env, tmp_path, fault):
    path = str(tmp_path / "commands")
    dev = command_device(env, FileRecord(path), NOW - DAY_MS)
    target = dev.device_id
    old = env.command("controller", target, 5, "open-valve", None, NOW + 20 * 3600 * 1000)
    assert dev.handle_command(dev.cmd_topic, old, NOW).accepted
    damage(path, fault)
    start = NOW + 60_000
    again = command_device(env, FileRecord(path), start)
    replay = again.handle_command(again.cmd_topic, old, start + 1000)
    assert not replay.accepted and "command store" in replay.reason
    short = env.command("controller", target, 6, "x", None, start + 60_000)       # could predate the loss
    assert not again.handle_command(again.cmd_topic, short, start + 1000).accepted
    fresh = env.command("controller", target, 7, "x", None, start + DAY_MS)       # issued after the start
    assert again.handle_command(again.cmd_topic, fresh, start + 1000).accepted
    later = command_device(env, FileRecord(path), start + 2000)                   # the new mark persists
    assert not later.handle_command(later.cmd_topic, fresh, start + 2000).accepted
    assert later.handle_command(later.cmd_topic, env.command("controller", target, 8, "y", None, start + 9000),
                                start + 2000).accepted


def test_sdk_command_not_after_is_capped(env):
    dev = command_device(env, dp.MemoryRecord(), NOW - DAY_MS)
    target = dev.device_id
    far = dev.handle_command(dev.cmd_topic, env.command("controller", target, 1, "x", None, NOW + DAY_MS + 1), NOW)
    assert not far.accepted and "24 h" in far.reason
    assert dev.handle_command(dev.cmd_topic, env.command("controller", target, 2, "x", None, NOW + DAY_MS),
                              NOW).accepted


def test_sdk_commands_need_a_command_store(env):
    dev = env.device("actuator")
    dev.update_controller(env.ledger.device_proof(env.net["controller"].id))
    cmd = env.command("controller", dev.device_id, 1, "x", None, NOW + 5000)
    refused = dev.handle_command(dev.cmd_topic, cmd, NOW)
    assert not refused.accepted and "command store" in refused.reason


# --- the board client under CPython ------------------------------------------------------------------


class GatewayLink(BoardLink):
    """An MQTT object for the board client: every publish goes through ``GatewayCore`` and is kept."""

    def __init__(self, env: Env, sent: list, accepted: list, clock: Clock) -> None:
        super().__init__(clock)
        self.env, self.sent, self.accepted = env, sent, accepted

    def deliver(self, topic: str, payload: bytes) -> None:
        self.sent.append(payload)
        for e in self.env.feed(topic, payload, NOW):
            if isinstance(e, c.Reply):
                self.events.append(("msg", e.topic, e.payload))
            elif isinstance(e, c.Accept):
                self.accepted.append(e)
            elif isinstance(e, c.Refuse) and e.reply_topic:
                self.events.append(("msg", e.reply_topic, e.reply()))


def board_client(env: Env, storage, sent: list, accepted: list, **cfg):
    config = {"site": env.gw.site, "identity_key": env.net["sensor"].priv, "ca_public": env.ca_public,
              "backoff_min_ms": 100, "max_inflight": 16}
    config.update(cfg)
    clock = Clock()
    return board.DeviceClient(config, lambda: GatewayLink(env, sent, accepted, clock), storage=storage,
                              ticks_ms=clock.ticks, ticks_diff=lambda a, b: a - b, time_ms=lambda: NOW,
                              sleep_ms=clock.sleep, rng=os.urandom, backend=CRYPTO)


def run(client, steps: int = 100) -> None:
    """Let the client work (the link answers at once; an idle poll moves its clock)."""
    for _ in range(steps):
        client.step(10)


@pytest.mark.parametrize("fault", FAULTS)
def test_board_lost_counter_drops_the_session_and_never_repeats_a_nonce(env, tmp_path, fault):
    storage, sent, accepted = FileStorage(str(tmp_path)), [], []
    client = board_client(env, storage, sent, accepted)
    assert client.open_session(5000)
    first = client.session.keys.session_id
    for i in range(5):
        client.publish({"i": i})
    run(client)
    assert [a.seq for a in accepted] == [1, 2, 3, 4, 5]
    damage(tmp_path / "llseq", fault)
    again = board_client(env, storage, sent, accepted)
    assert again.seq.lost and again.session is None and again.stats["sessions_restored"] == 0
    assert storage.read("llsess") == b""
    assert again.open_session(5000) and again.session.keys.session_id != first
    for i in range(5):
        again.publish({"i": 10 + i})
    run(again)
    pairs = nonce_pairs(sent)
    assert len(pairs) == len(set(pairs))
    # seq 1 under the new session is refused as a replay: the session is dropped, the counter moves on,
    # a third session opens and the next readings are taken
    for i in range(3):
        again.publish({"i": 20 + i})
    run(again)
    assert again.stats["sessions_opened"] == 2 and again.session.keys.session_id != first
    # the readings refused as replays after the restart are sealed again (new seqs) and taken: none lost
    assert sorted(a.measurements["i"] for a in accepted if a.chain is None) == [0, 1, 2, 3, 4, 10, 11, 12, 13, 14, 20,
                                                                             21, 22]     # not the chain statements
    assert again.stats["resealed"] == 5
    pairs = nonce_pairs(sent)
    assert len(pairs) == len(set(pairs))


def test_board_session_record_below_its_counter_mark_is_refused(env, tmp_path):
    storage, sent, accepted = FileStorage(str(tmp_path)), [], []
    client = board_client(env, storage, sent, accepted, mode="signed")
    for i in range(20):
        client.publish({"i": i})
    old = storage.read("llseq")
    for i in range(20):
        client.publish({"i": i})
    session_client = board_client(env, storage, sent, accepted)
    assert session_client.open_session(5000)
    assert session_client.session.mark == 48                # the board counter reserves 16 at a time
    assert board_client(env, storage, sent, accepted).stats["sessions_restored"] == 1
    storage.replace("llseq", old)
    again = board_client(env, storage, sent, accepted)
    assert not again.seq.lost and again.seq.last == 32
    assert again.session is None and again.stats["sessions_restored"] == 0 and storage.read("llsess") == b""


def test_board_pre_made_session_keys_are_refused(env):
    keys = {"key": os.urandom(16), "base_iv": os.urandom(13), "session_id": os.urandom(8)}
    with pytest.raises(ValueError, match="pre-made session keys"):
        board_client(env, None, [], [], session=keys)


def test_board_command_seqs_survive_a_reset(env, tmp_path):
    storage = FileStorage(str(tmp_path))
    proof = env.ledger.device_proof(env.net["controller"].id)
    client = board_client(env, storage, [], [], identity_key=env.net["actuator"].priv,
                          chain_id=env.net.chain_id, validators=list(env.ledger.keys))
    client.protocol.update_controller(proof)
    cmd = env.command("controller", client.device_id, 3, "open-valve", None, NOW + 5000)
    topic = client.protocol.cmd_topic
    assert not client.protocol.handle_command(topic, cmd, NOW).accepted    # fresh store: fenced for a day
    fresh = env.command("controller", client.device_id, 4, "open-valve", None, NOW + DAY_MS)
    assert client.protocol.handle_command(topic, fresh, NOW).accepted
    again = board_client(env, storage, [], [], identity_key=env.net["actuator"].priv,
                         chain_id=env.net.chain_id, validators=list(env.ledger.keys))
    again.protocol.update_controller(proof)
    assert not again.protocol.handle_command(topic, fresh, NOW).accepted
    assert again.protocol.handle_command(topic, env.command("controller", client.device_id, 5, "x", None, NOW + 5000),
                                         NOW).accepted


def test_sdk_device_open_keeps_command_seqs_and_fences_a_lost_record(env, tmp_path):
    from ledgerlink.device.client import Device

    def open_device(now: int) -> Device:
        dev = Device.open(str(tmp_path), "plant-1", "127.0.0.1", 1, env.net.chain_id, env.ledger.keys,
                          env.ca_public, backend=CRYPTO, clock=lambda: now)
        dev.core.update_controller(env.ledger.device_proof(env.net["controller"].id))
        return dev

    dev = open_device(NOW)                              # the key is made now: no fence on its empty record
    target, topic = dev.core.device_id, dev.core.cmd_topic
    cmd = env.command("controller", target, 1, "open-valve", None, NOW + 5000)
    assert dev.core.handle_command(topic, cmd, NOW).accepted
    dev.queue.close()
    again = open_device(NOW + 1000)
    assert not again.core.handle_command(topic, cmd, NOW + 1000).accepted
    again.queue.close()
    damage(tmp_path / "commands", "bit-flipped")
    fenced = open_device(NOW + 2000)
    short = env.command("controller", target, 2, "x", None, NOW + 9000)
    refused = fenced.core.handle_command(topic, short, NOW + 2000)
    assert not refused.accepted and "command store" in refused.reason
    fenced.queue.close()


# --- the records' decoders ----------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**64 - 1), st.dictionaries(st.binary(min_size=16, max_size=16), st.integers(1, dc.MAX_SEQ),
                                                  max_size=8))
def test_command_record_round_trip_and_damage(fence_ms, seqs):
    raw = dp.encode_commands(fence_ms, seqs)
    assert commands.decode_commands(raw) == (fence_ms, seqs)
    for i in (0, len(raw) // 2, len(raw) - 1):
        with pytest.raises(dp.LedgerlinkError):
            commands.decode_commands(raw[:i] + bytes([raw[i] ^ 0x10]) + raw[i + 1:])
    with pytest.raises(dp.LedgerlinkError):
        commands.decode_commands(raw[:-1])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_junk_command_and_counter_records_are_refused(tmp_path_factory, data):
    with pytest.raises(dp.LedgerlinkError):
        commands.decode_commands(data)
    path = tmp_path_factory.mktemp("c") / "seq"
    path.write_bytes(data)
    os.chmod(path, 0o600)
    value = FileCounter(path).load()
    assert value is None or (len(data) == 8 and value == int.from_bytes(data[:4], "big"))


def test_sdk_lost_command_store_with_an_unset_clock_at_start_is_fenced_at_the_first_command(env):
    dev = command_device(env, dp.MemoryRecord(), 0)     # a board that started before its clock was set
    target = dev.device_id
    short = env.command("controller", target, 1, "x", None, NOW + 60_000)
    refused = dev.handle_command(dev.cmd_topic, short, NOW)
    assert not refused.accepted and "command store" in refused.reason
    assert dev.handle_command(dev.cmd_topic, env.command("controller", target, 2, "x", None, NOW + DAY_MS),
                              NOW).accepted


def test_sdk_session_opened_before_any_reading_survives_a_restart(env, tmp_path):
    """A session opened on a fresh device (no counter file yet) is kept: opening it stores the counter mark."""
    dev = SdkDevice(env, str(tmp_path))
    assert dev.core.counter.lost
    dev.open_session()
    dev.restart()
    assert dev.restored and not dev.core.counter.lost
    dev.publish(1)
    pairs = nonce_pairs(dev.sent)
    assert len(pairs) == len(set(pairs))


def test_board_session_opened_before_any_reading_survives_a_reset(env, tmp_path):
    storage, sent, accepted = FileStorage(str(tmp_path)), [], []
    client = board_client(env, storage, sent, accepted)
    assert client.seq.lost and client.open_session(5000)
    again = board_client(env, storage, sent, accepted)
    assert not again.seq.lost and again.stats["sessions_restored"] == 1
    assert again.session.keys.session_id == client.session.keys.session_id
