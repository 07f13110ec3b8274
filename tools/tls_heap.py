"""``python3 -m ledgerlink.tools.tls_heap``: what broker TLS costs a board32 MicroPython client, and whether it can.

Runs the board client's transport (``micropython/ledgerlink_client/transport.py``) and MQTT codec in
board32 (``../shared/tools/micropython-board32``) against a local MQTT stub, over plain TCP and over TLS,
and prints: the smallest ``-X heapsize`` with which the client connects (CONNECT/CONNACK), the heap the
open connection holds after a collection, and whether the port's ``tls`` can check the broker's
certificate. board32's ``tls`` is axTLS: it offers only RSA key exchange (no ECDHE, no ECDSA
certificates, so the site CA's P-256 certificates do not handshake) and no certificate check, so the
TLS run uses a throw-away RSA certificate and an unchecked connection, for the measurement only.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parent.parent
BOARD32 = ROOT.parent / "shared" / "tools" / "micropython-board32" / "micropython-board32"
CONNACK = b"\x20\x02\x00\x00"

PROGRAM = """
import gc, sys
sys.path.insert(0, %(lib)r)
from ledgerlink_client import mqtt, transport
import socket
if %(tls)r:
    import tls
    from ledgerlink_client import tls_transport
gc.collect()
base = gc.mem_alloc()
if %(tls)r:
    raw = socket.socket()
    raw.connect(socket.getaddrinfo('127.0.0.1', %(port)d, 0, socket.SOCK_STREAM)[0][-1])
    ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = tls.CERT_NONE
    stream = tls_transport.TlsTransport(raw, ctx.wrap_socket(raw, server_hostname='127.0.0.1'))
else:
    stream = transport.open_socket('127.0.0.1', %(port)d)
client = mqtt.MQTTClient(stream, 'll-heap', keepalive=30)
client.connect()
gc.collect()
print('HELD', gc.mem_alloc() - base)
try:
    transport.open_socket('127.0.0.1', %(port)d, 5000, tls_ca=b'0')
    print('CHECKS', 1)
except OSError:
    print('CHECKS', 0)
"""


def _rsa_server_context(folder: Path) -> ssl.SSLContext:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(65537, 2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tls-heap")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False).sign(key, hashes.SHA256()))
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    ctx.set_ciphers("DEFAULT:AES256-SHA256:AES128-SHA256:AES128-SHA:@SECLEVEL=0")     # axTLS: RSA key exchange
    return ctx


def mqtt_stub(tls: ssl.SSLContext | None) -> int:
    """A listener that answers each CONNECT with CONNACK (in a daemon thread); its port."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(16)

    def serve(conn: socket.socket) -> None:
        try:
            s = tls.wrap_socket(conn, server_side=True) if tls is not None else conn
            s.settimeout(10)
            if s.recv(256):
                s.sendall(CONNACK)
            s.recv(256)
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def accept() -> None:
        while True:
            conn, _ = ls.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return ls.getsockname()[1]


def run(port: int, use_tls: bool, heap: int) -> dict[str, int] | None:
    """HELD and CHECKS of one board32 run, or None when it did not connect in ``heap`` bytes."""
    program = PROGRAM % {"lib": str(ROOT / "micropython"), "port": port, "tls": use_tls}
    p = subprocess.run([str(BOARD32), "-X", "heapsize=%d" % heap, "-c", program], capture_output=True, text=True,
                       timeout=60)
    out = dict(line.split() for line in p.stdout.splitlines() if line.split()[:1] in (["HELD"], ["CHECKS"]))
    return {k: int(v) for k, v in out.items()} if p.returncode == 0 and "HELD" in out else None


def smallest_heap(port: int, use_tls: bool, lo: int = 1024, hi: int = 1 << 20, step: int = 256) -> int:
    if run(port, use_tls, hi) is None:
        raise SystemExit("board32 did not connect %s even with a %d-byte heap" % ("over TLS" if use_tls else "", hi))
    while hi - lo > step:
        mid = (lo + hi) // 2
        if run(port, use_tls, mid) is None:
            lo = mid
        else:
            hi = mid
    return hi


def main(argv: Sequence[str] | None = None) -> int:
    argparse.ArgumentParser(prog="python3 -m ledgerlink.tools.tls_heap", description=__doc__.split("\n")[0]
                            ).parse_args(argv)
    if not BOARD32.exists():
        raise SystemExit("board32 is missing: %s" % BOARD32)
    with tempfile.TemporaryDirectory() as tmp:
        ports = {"tcp": mqtt_stub(None), "tls": mqtt_stub(_rsa_server_context(Path(tmp)))}
        print("%-4s %22s %26s %30s" % ("", "smallest heap (bytes)", "held by the connection", "checks the broker's cert"))
        for name, port in ports.items():
            heap = smallest_heap(port, name == "tls")
            res = run(port, name == "tls", 256 * 1024)
            print("%-4s %22d %26d %30s" % (name, heap, res["HELD"], "-" if name == "tcp" else
                                            ("yes" if res["CHECKS"] else "no (axTLS)")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
