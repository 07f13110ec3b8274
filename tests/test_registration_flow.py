"""Registration over MQTT on a live stack: a device publishes its own request on ``reg``, the gateway holds
it, ``ledgerlink admin pending`` lists it (proof of possession checked, ledger status proven),
``register --pending`` puts it on the ledger, the device's readings are accepted and the held request is
settled; an altered held request is caught by the admin tool, not believed."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ledgerlink.core.backend import get_backend
from ledgerlink.device.client import Device
from ledgerlink.device.core import ROLE_SENSOR, DeviceCore, MemoryCounter, SequenceCounter
from ledgerlink.device.offline_queue import OfflineQueue
from ledgerlink.ledger.state import encoding as enc
from ledgerlink.tools import admin
from ledgerlink.tools.stack import Stack

pytestmark = pytest.mark.slow
CRYPTO = get_backend("cpython")


def wait_for(cond, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


def run_admin(capsys, *args) -> tuple[int, str, str]:
    rc = admin.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("reg") / "site", site="rg", limits={"registry_ttl_ms": 300})
    try:
        s.start()
        yield s
    finally:
        s.stop()


def test_device_registers_over_mqtt_and_an_admin_approves(stack, tmp_path, capsys):
    cluster = stack.cluster.config_path
    core = DeviceCore(CRYPTO.generate_private_key(), "rg", SequenceCounter(MemoryCounter()), stack.chain_id,
                      stack.validators, gateway_keys={stack.gateway_id: stack.public_key("gateway")},
                      backend="cpython")
    dev_hex = core.device_id.hex()
    receipts: list = []
    dev = Device(core, OfflineQueue(tmp_path / "q.db"), "127.0.0.1", stack.broker_port, keepalive=5,
                 password=stack.device_login(core.device_id)["password"])   # its broker account comes first
    dev.on_receipt = receipts.append
    dev.start()
    try:
        assert dev.wait_connected(10)
        dev.register(ROLE_SENSOR, {"name": "new-probe", "location": "bay 4"})
        assert dev.wait_registration_held(20)

        rc, out, err = run_admin(capsys, "--cluster", cluster, "pending", "--gateway", stack.dashboard_url)
        assert rc == 0, err
        line = [l for l in out.splitlines() if dev_hex in l]
        assert len(line) == 1 and "sensor" in line[0] and "name='new-probe'" in line[0] and "waiting" in line[0], out

        rc, out, err = run_admin(capsys, "--cluster", cluster, "register", "--pending", dev_hex,
                                 "--gateway", stack.dashboard_url)
        assert rc == 0, err
        assert "registered device %s: role sensor" % dev_hex in out

        rc, out, err = run_admin(capsys, "--cluster", cluster, "register", "--pending", dev_hex,
                                 "--gateway", stack.dashboard_url)
        assert rc == 1 and "already" in err                            # the ledger refuses a second one

        dev.publish_reading({"t": 19.5})
        assert wait_for(lambda: any(r.valid for r in receipts)), receipts
        # the gateway saw the device's record when it checked the reading: the held request is settled
        assert wait_for(lambda: dev_hex not in run_admin(capsys, "--cluster", cluster, "pending",
                                                         "--gateway", stack.dashboard_url)[1])
    finally:
        dev.stop()


class _LyingGateway(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args) -> None:
        pass


def test_an_altered_held_request_is_not_registered(stack, capsys):
    other = CRYPTO.generate_private_key()                           # a certified block to prove absence against,
    stack.register([enc.registration_request(other, ROLE_SENSOR, {"name": "other"}, int(time.time() * 1000))])
    priv = CRYPTO.generate_private_key()                            # whichever test of the module runs first
    request = bytearray(enc.registration_request(priv, ROLE_SENSOR, {"name": "honest"}, int(time.time() * 1000)))
    dev = enc.device_id(CRYPTO.public_key(priv, True))
    request[request.index(b"honest")] ^= 0x20                       # the gateway renames the device
    _LyingGateway.body = json.dumps({"registrations": [{"device": dev.hex(), "request": request.hex()}]}).encode()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _LyingGateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = "http://127.0.0.1:%d" % server.server_address[1]
    try:
        rc, out, _ = run_admin(capsys, "--cluster", stack.cluster.config_path, "pending", "--gateway", url)
        assert rc == 0 and "INVALID" in out and "proof of possession" in out
        rc, _, err = run_admin(capsys, "--cluster", stack.cluster.config_path, "register", "--pending", dev.hex(),
                               "--gateway", url)
        assert rc == 2 and "proof of possession" in err
        rc, _, err = run_admin(capsys, "--cluster", stack.cluster.config_path, "pending", "--gateway",
                               "http://127.0.0.1:9")
        assert rc == 3 and "is it running" in err and len(err.strip().splitlines()) == 1
    finally:
        server.shutdown()
    rc, out, _ = run_admin(capsys, "--cluster", stack.cluster.config_path, "show", dev.hex())
    assert rc == 1 and "not registered" in out
