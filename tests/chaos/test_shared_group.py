"""A gateway member removed from the shared subscription for good strands no reading: its session expires
``SESSION_EXPIRY_S`` after it left (mosquitto then drops the frames it was dealt), each device sends such a
frame again until a stored-ack comes, and from then on every frame goes to the members that run. With the
old 3600 s expiry the stopped member kept catching every second frame for an hour, each one stored only
after the device's ack timeout and a resend."""

import signal
import sqlite3
import time

import pytest

from ledgerlink.gateway.mqtt_adapter import SESSION_EXPIRY_S

pytestmark = pytest.mark.slow

ACK_TIMEOUT_S = 3.0
STORED_WITHIN_S = 40.0      # every reading made after the stop is stored this long after it (expiry, resends)


def _stored(db, hashes) -> set[bytes]:
    con = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=10)
    try:
        return {bytes(h) for (h,) in con.execute("SELECT frame_hash FROM messages") if bytes(h) in hashes}
    finally:
        con.close()


def _wait_stored(db, frames, timeout: float) -> float:
    """Seconds until every frame of ``frames`` is in the store; AssertionError after ``timeout``."""
    want = {f.frame_hash for f in frames}
    started = time.monotonic()
    while True:
        missing = want - _stored(db, want)
        if not missing:
            return time.monotonic() - started
        assert time.monotonic() - started < timeout, "%d of %d readings not stored" % (len(missing), len(want))
        time.sleep(0.2)


def test_a_member_stopped_for_good_strands_no_reading(tmp_path):
    from ledgerlink.device.client import Device
    from ledgerlink.tools.stack import Stack

    s = Stack(tmp_path / "site", site="sg", nodes=1, broker="mosquitto", gateways=2)
    dev = None
    try:
        s.start()
        dev = Device.open(str(tmp_path / "dev"), "sg", "127.0.0.1", s.broker_port, s.chain_id, s.validators,
                          ca_public=s.public_key("gw-ca"), gateway_keys={s.gateway_id: s.public_key("gateway")},
                          backoff_initial=0.2, backoff_max=1.0, ack_timeout=ACK_TIMEOUT_S)
        s.register([dev.core.registration_request(int(time.time() * 1000)).payload])
        login = s.device_login(dev.core.device_id)
        dev.set_login(login["password"], login["username"])
        dev.start()
        db = tmp_path / "site" / "gateway.db"
        _wait_stored(db, [dev.publish_reading({"n": i}) for i in range(4)], 30)

        second = s.gateways[1]
        second.send_signal(signal.SIGTERM)                  # removed for good: nothing starts it again
        second.wait(15)
        stopped = time.monotonic()
        during = []
        for i in range(10):                                 # about half are dealt to the stopped member
            during.append(dev.publish_reading({"n": 100 + i}))
            time.sleep(0.2)
        # stranded until the member's session expires, then sent again by the device (ack timeout, backoff)
        _wait_stored(db, during, STORED_WITHIN_S - (time.monotonic() - stopped))

        while time.monotonic() - stopped < min(SESSION_EXPIRY_S, STORED_WITHIN_S) + 2:
            time.sleep(0.2)
        resent = dev.resent
        after = []
        for i in range(10):
            after.append(dev.publish_reading({"n": 200 + i}))
            time.sleep(0.2)
        _wait_stored(db, after, 30)
        assert dev.resent == resent, "frames were dealt to the stopped member after its session expired"
    finally:
        if dev is not None:
            dev.stop()
        s.stop()
