"""Crash safety on the live stack (real mosquitto, real ledger): the gateway process is SIGKILLed while
readings stream in; after a restart every reading the broker took is stored exactly once and anchored
on the ledger, and the only refusals are replays of readings already stored."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time

import pytest

from ledgerlink.core import cbor
from ledgerlink.device.core import MODE_SIGNED, DeviceCore, MemoryCounter, SequenceCounter
from ledgerlink.gateway import checks as c
from ledgerlink.gateway.mqtt_client import MqttClient
from ledgerlink.tools.stack import Stack, launch_gateway
from tests.mqtt_helpers import subscriber

pytestmark = pytest.mark.slow

DEVICES = 20
PER_DEVICE = 100


def _stored(db: str) -> tuple[list[bytes], int]:
    """(frame hashes of all stored messages, how many of them are in an anchored batch)."""
    con = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=10)
    try:
        hashes = [bytes(r[0]) for r in con.execute("SELECT frame_hash FROM messages")]
        anchored = con.execute("SELECT COUNT(*) FROM messages m JOIN batches b ON m.id BETWEEN b.first_id AND b.last_id "
                               "AND m.owner = b.owner "
                               "WHERE b.status = 'anchored'").fetchone()[0]
        return hashes, anchored
    finally:
        con.close()


def test_gateway_killed_under_load_loses_no_reading_and_anchors_all(tmp_path):
    site = tmp_path / "site"
    s = Stack(site, site="crash", broker="mosquitto",
              limits={"rate_per_s": 100000, "burst": 100000})
    s.start()
    pub = down = None
    try:
        devs = [DeviceCore(os.urandom(32), "crash", SequenceCounter(MemoryCounter()), s.chain_id, s.validators)
                for _ in range(DEVICES)]
        s.register([d.registration_request(int(time.time() * 1000)).payload for d in devs])
        down, replies = subscriber(s.broker_port, "ll/crash/dev/+/down", "test-crash-down",
                                   s.access.add("test-crash-down", "operator"))
        frames = [d.reading({"i": i}, int(time.time() * 1000), MODE_SIGNED)
                  for i in range(PER_DEVICE) for d in devs]
        pub = MqttClient("127.0.0.1", s.broker_port, "test-crash-pub", clean_start=True,
                         **s.access.add("test-crash-pub", "operator")).start()
        assert pub.wait_connected(10)
        db = str(site / "gateway.db")
        pub.publish_many([(f.topic, f.payload, False) for f in frames[:DEVICES]])      # registry records cached
        deadline = time.monotonic() + 60
        while len(_stored(db)[0]) < DEVICES:
            assert time.monotonic() < deadline, "first readings not stored"
            time.sleep(0.05)
        pub.publish_many([(f.topic, f.payload, False) for f in frames[DEVICES:]])
        deadline = time.monotonic() + 60
        while len(_stored(db)[0]) < len(frames) // 5:
            assert time.monotonic() < deadline, "the gateway stored too little before the kill"
            time.sleep(0.01)
        os.kill(s.gateway.pid, signal.SIGKILL)
        s.gateway.wait(10)
        assert len(_stored(db)[0]) < len(frames), "the kill came after the last reading was stored"
        deadline = time.monotonic() + 60
        while pub.inflight():                            # every reading was taken by the broker
            assert time.monotonic() < deadline
            time.sleep(0.05)

        cfg = json.loads((site / "gateway.json").read_text())
        s.gateway, s.dashboard_url = launch_gateway(cfg, site, 30)
        deadline = time.monotonic() + 90
        while True:
            hashes, anchored = _stored(db)
            if anchored == len(frames):
                break
            assert time.monotonic() < deadline, "%d stored, %d anchored of %d" % (len(hashes), anchored, len(frames))
            time.sleep(0.2)
        assert sorted(hashes) == sorted(f.frame_hash for f in frames)          # each exactly once
        assert "(session resumed)" in (site / "gateway.log").read_text()
        time.sleep(1.0)
        stored = set(hashes)
        while not replies.empty():
            reply = cbor.loads(replies.get_nowait()[1])
            if reply[0] == 2:                            # a refusal: only of a redelivered, stored reading
                assert reply[2] == c.REPLAY and reply[1] in stored, reply
    finally:
        if pub is not None:
            pub.stop()
        if down is not None:
            down.loop_stop()
            down.disconnect()
        s.stop()
