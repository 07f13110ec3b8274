"""The board client's TLS transport in board32 (MicroPython with axTLS)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from ledgerlink.tools import tls_heap


def test_board_client_speaks_mqtt_over_tls_and_never_connects_unchecked():
    assert tls_heap.BOARD32.exists(), "board32 missing at %s" % tls_heap.BOARD32
    with tempfile.TemporaryDirectory() as tmp:
        port = tls_heap.mqtt_stub(tls_heap._rsa_server_context(Path(tmp)))
        res = tls_heap.run(port, True, 256 * 1024)
    assert res is not None, "no CONNACK over TLS"
    assert res["CHECKS"] == 0          # axTLS cannot check a certificate: open_socket(tls_ca=...) refuses
