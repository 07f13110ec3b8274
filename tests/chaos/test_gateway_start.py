"""A starting gateway connects to its broker without waiting for the ledger: the newest header is asked on
a thread of its own. Before, the first ledger request came first, so a ledger node that accepted the
connection and did not answer (stopped, or still loading) held the broker connection, and every receipt,
for the client's 5 s timeout."""

import socket
import threading
import time

import pytest

from ledgerlink.gateway.mqtt_adapter import MqttGateway
from tests.gateway.fake_ledger import FakeLedgerAdapter
from tests.gateway.test_checks import SITE
from tests.gateway.test_service import make

LEDGER_SILENT_S = 4.0

pytestmark = pytest.mark.slow          # about 13 s: the gateway's threads wait out the silent ledger at its stop


class _SilentLedger:
    """A ledger whose node takes ``LEDGER_SILENT_S`` to answer (and then has nothing)."""

    def latest(self):
        time.sleep(LEDGER_SILENT_S)
        return {"ok": False}


class _IdleBatcher:
    last_header = None

    def step(self, now_ms):
        return []


def test_the_broker_connection_does_not_wait_for_the_ledger(tmp_path):
    from tests.devnet import DevNet

    svc = make(FakeLedgerAdapter(clock=lambda: DevNet().time_ms), tmp_path / "gw.db")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(LEDGER_SILENT_S)
    gw = MqttGateway(svc, _IdleBatcher(), _SilentLedger(), SITE, "127.0.0.1", server.getsockname()[1], "t-gw-start")
    started = time.monotonic()
    runner = threading.Thread(target=gw.run, daemon=True)
    runner.start()
    try:
        conn, _ = server.accept()
        waited = time.monotonic() - started
        conn.close()
    finally:
        gw.stop()
        runner.join(LEDGER_SILENT_S + 10)
        server.close()
    assert waited < 2.0, "the gateway connected to its broker %.1f s after it started" % waited
