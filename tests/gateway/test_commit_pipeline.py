"""The MQTT adapter's check and commit threads: a group is checked while the one before it is being
committed, yet nothing is published or acknowledged before its own commit, groups are acknowledged in
order, and after a failed commit nothing more is acknowledged."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest

from ledgerlink.gateway.mqtt_adapter import MqttGateway
from tests.devnet import DevNet

from tests.gateway.fake_ledger import FakeLedgerAdapter
from tests.gateway.test_checks import NOW, SITE, reading, up
from tests.gateway.test_service import make


class FakeClient:
    """Records what the adapter publishes and acknowledges, in order."""

    def __init__(self) -> None:
        self.log: list[tuple[str, object]] = []
        self.connected = threading.Event()

    def publish_many(self, items, flush=True) -> None:
        self.log += [("publish", topic) for topic, _, _ in items]

    def publish_many_qos0(self, items, flush=True) -> None:
        self.log += [("publish", topic) for topic, _ in items]

    def ack_many(self, acks, flush=True) -> None:
        self.log += [("ack", token) for token in acks]

    def publish(self, topic, payload, qos=1, retain=False, flush=True) -> None:    # as paho's (flush: ours)
        self.log.append(("publish", topic))

    def ack(self, mid, qos) -> None:                                        # as paho's
        self.log.append(("ack", mid))

    def acks(self) -> list:
        return [x for kind, x in self.log if kind == "ack"]


class GatedStore:
    """Wraps a store: each ``write_many`` of accepted frames waits until the test opens the gate, or fails
    when told to."""

    def __init__(self, store) -> None:
        self.store = store
        self.gate = threading.Semaphore(0)
        self.entered = threading.Semaphore(0)
        self.fail = False

    def write_many(self, accepted=(), *args, **kw):
        if not accepted:                                 # a group of ticks alone
            return self.store.write_many(accepted, *args, **kw)
        self.entered.release()
        assert self.gate.acquire(timeout=10)
        if self.fail:
            raise OSError("disk gone")
        return self.store.write_many(accepted, *args, **kw)

    def __getattr__(self, name):
        return getattr(self.store, name)


def _gateway(tmp_path, client="ledgerlink"):
    ledger = FakeLedgerAdapter(clock=lambda: DevNet().time_ms)
    svc = make(ledger, tmp_path / "gw.db")
    net = ledger.net
    dev = net["sensor"].id
    svc.core.on_registry_proof(ledger.device_proof(dev), NOW, dev)
    store = svc.store = GatedStore(svc.store)
    gw = MqttGateway(svc, None, ledger, SITE, "127.0.0.1", 1, "test-gw", clock=lambda: NOW, client=client)
    gw.client = FakeClient()
    frames = [reading(net, "sensor", seq) for seq in range(1, 7)]
    threads = [threading.Thread(target=gw._checks_loop, daemon=True),
               threading.Thread(target=gw._commit_loop, daemon=True)]
    for t in threads:
        t.start()
    return gw, store, up(dev), frames, threads


def _events(topic, frames, first=0):
    """The check queue's entries for ``frames`` as the adapter makes them (ack token ``(i, 0)``)."""
    return [("frame", topic, f, (i, 0), 1, hashlib.sha256(f).digest()) for i, f in enumerate(frames, first)]


def _wait(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.mark.parametrize("client", ["ledgerlink", "paho"])
def test_next_group_is_checked_while_the_last_commits_and_acks_follow_each_commit(tmp_path, client):
    gw, store, topic, frames, threads = _gateway(tmp_path, client)
    gw.events.put(("frames", _events(topic, frames[:3])))
    assert store.entered.acquire(timeout=10)             # group 1 is committing
    gw.events.put(("frames", _events(topic, frames[3:], 3)))
    [state] = gw.service.core.devices.values()
    _wait(lambda: state.window.highest == 6)             # group 2 is checked meanwhile
    time.sleep(0.1)
    assert gw.client.log == []                           # checked, but nothing out before the commit
    store.gate.release()
    _wait(lambda: len(gw.client.acks()) == 3)
    assert gw.client.acks() == [(0, 0), (1, 0), (2, 0)]
    assert store.store.stats()["unbatched"] == 3
    assert all(kind == "publish" for kind, _ in gw.client.log[:3])      # republished, then acknowledged
    assert store.entered.acquire(timeout=10)
    store.gate.release()
    _wait(lambda: len(gw.client.acks()) == 6)
    assert gw.client.acks() == [(i, 0) for i in range(6)]
    gw.stop()
    threads[0].join(5)
    gw.commits.put(None)                                 # as ``run`` ends the commit thread
    threads[1].join(5)
    assert not any(t.is_alive() for t in threads)


def test_after_a_failed_commit_nothing_more_is_acknowledged(tmp_path):
    gw, store, topic, frames, threads = _gateway(tmp_path)
    gw.events.put(("frames", _events(topic, frames[:3])))
    assert store.entered.acquire(timeout=10)
    gw.events.put(("frames", _events(topic, frames[3:], 3)))
    time.sleep(0.2)
    store.fail = True
    store.gate.release()
    _wait(gw.stop_event.is_set)
    store.gate.release()
    for t in threads:
        t.join(5)
        assert not t.is_alive()
    assert gw.client.log == []
    assert store.store.stats()["unbatched"] == 0
