"""Costs of an anonymous session set-up (docs/protocol.md, "Anonymous sessions") beside today's ECQV session.

``python3 -m ledgerlink.tools.anon_bench`` prints:
- bytes on the wire per session set-up, device <-> fog (request and answer; the fog's grant to the cloud
  separately), next to an ECQV session's request and response made and checked by the same code the
  device and the gateway run, and EDHOC's 101 bytes (RFC 9528 messages 1 to 3, method 3, suite 2, the
  smallest form) as a reference;
- the prover's cost on the QEMU board (Cortex-M3, library in ROMFS, ``-icount shift=0``): instructions
  of the whole request, of its part made ahead while idle and of its part made when sent, of the parts
  of the work ahead (Schnorr proof, ECIES ephemeral key and two ECDH, the escrow's ES256 signature) and
  of opening the fog's answer; the ECQV device side for comparison;
- the peak live heap (``gc.peak_live()``) of making the request and opening the answer on board32, with
  the library from ROMFS and from .mpy files.
``--no-qemu`` / ``--no-board32`` leave those parts out. The board tools must be at ../shared/tools.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

from ledgerlink.core import cbor, cose, ecies, ecqv
from ledgerlink.core.backend import get_backend
from ledgerlink.protocol import anon_device, anon_wire
from ledgerlink.protocol.codes import KIND_SESSION

EDHOC_BYTES = 101
RUNS = 3                            # measurements per operation on the QEMU board (the collector may run in one)
SITE = "plant-1"
TIME_MS = 1_700_000_000_000

RNG_CLASS = """
import hashlib
class Rng:
    def __init__(self, label):
        self.seed = hashlib.sha256(label.encode()).digest()
        self.count = 0
    def __call__(self, n):
        out = b''
        while len(out) < n:
            self.count += 1
            out += hashlib.sha256(self.seed + self.count.to_bytes(8, 'big')).digest()
        return out[:n]
"""
_namespace: dict = {}
exec(RNG_CLASS, _namespace)
Rng = _namespace["Rng"]


def _key(label: str) -> bytes:
    return hashlib.sha256(b"anon-bench/" + label.encode()).digest()


def fog_answer(request: anon_device.AnonRequest, fog_priv: bytes, gateway_priv: bytes,
               cloud_pub: bytes) -> tuple[bytes, bytes]:
    """The fog's anon-response (a grant) and anon-grant to ``request``, sealed as ``AnonFog`` seals them once
    the ledger proved the spend (here without a ledger: the spend tx id is a placeholder of its size)."""
    crypto = get_backend()
    c1, c2, c3 = anon_wire.decode_request(request.payload)
    z = ecies.shared(fog_priv, c1)
    body = ecies.open_sealed(ecies.derive(z, c1, anon_wire.REQUEST_INFO), c2, c3, request.topic.encode())
    anon_id, _, _, reply_tag, escrow = anon_wire.decode_request_body(body)
    rng = Rng("fog")
    key, base_iv, session_id, txid = rng(16), rng(13), rng(8), rng(32)
    until = TIME_MS // 1000 + 3600
    reply_topic = anon_wire.reply_topic(SITE, reply_tag)
    body = anon_wire.encode_response_body(0, (key, base_iv, session_id, until), txid)
    sealed = ecies.seal(ecies.derive(z, c1, anon_wire.RESPONSE_INFO), body, reply_topic.encode())
    box = ecies.encrypt(cloud_pub, key + base_iv, anon_wire.GRANT_INFO, session_id, rng)
    grant = anon_wire.encode_grant_payload(session_id, box, c1, escrow, txid, until, anon_id)
    gateway_id = hashlib.sha256(crypto.public_key(gateway_priv, True)).digest()[:16]
    return (anon_wire.encode_response(*sealed),
            cose.sign1(grant, gateway_priv, gateway_id, anon_wire.GRANT_AAD, crypto))


class Inputs:
    """Fixed keys and one honest exchange: the request (made with ``Rng('device')``) and the fog's answer."""

    def __init__(self) -> None:
        crypto = get_backend()
        self.device_priv, self.secret = _key("device"), _key("secret")
        self.device_id = hashlib.sha256(crypto.public_key(self.device_priv, True)).digest()[:16]
        self.fog_priv, self.cloud_priv, gateway_priv = _key("fog"), _key("cloud"), _key("gateway")
        self.fog_pub = crypto.public_key(self.fog_priv, True)
        self.cloud_pub = crypto.public_key(self.cloud_priv, True)
        self.request = anon_device.build_request(SITE, self.device_id, self.device_priv, self.secret, 1, self.fog_pub,
                                                 self.cloud_pub, TIME_MS, Rng("device"))
        self.answer, self.grant = fog_answer(self.request, self.fog_priv, gateway_priv, self.cloud_pub)
        self.session = anon_device.check_response(self.request, self.answer)
        ca_priv, site_priv = _key("ca"), _key("site")
        self.ca_pub, self.site_pub = crypto.public_key(ca_priv, True), crypto.public_key(site_priv, True)
        self.gateway_id = hashlib.sha256(crypto.public_key(gateway_priv, True)).digest()[:16]
        self.ecqv_secret, point = ecqv.create_request(Rng("ecqv-board"))
        self.cert, self.cert_r = ecqv.issue(point, ca_priv, b"serial", self.gateway_id, self.device_id,
                                            TIME_MS // 1000, TIME_MS // 1000 + 86400, ecqv.USAGE_SESSION,
                                            rng=Rng("ca"), peer=self.site_pub)


def ecqv_exchange() -> tuple[bytes, bytes]:
    """An ECQV session request frame and the gateway's session-response-msg, checked by the device."""
    from ledgerlink.protocol.device_protocol import DeviceProtocol

    crypto = get_backend()
    ca_priv, site_priv, gw_priv = _key("ca"), _key("site"), _key("gateway")
    gateway_id = hashlib.sha256(crypto.public_key(gw_priv, True)).digest()[:16]
    device = DeviceProtocol(_key("device"), SITE, None, ca_public=crypto.public_key(ca_priv, True), rng=Rng("ecqv"))
    out = device.session_request(TIME_MS)
    req = cbor.loads(cose.decode_sign1(out.payload).payload)
    site_public = crypto.public_key(site_priv, True)
    cert, r = ecqv.issue(req[2], ca_priv, Rng("serial")(16), gateway_id, device.device_id, TIME_MS // 1000,
                         TIME_MS // 1000 + 86400, ecqv.USAGE_SESSION, rng=Rng("ca"), peer=site_public)
    response = {1: req[3], 2: cert, 3: r, 4: site_public, 5: gateway_id}
    device.check_session_response(response, TIME_MS)
    return out.payload, cbor.dumps({0: KIND_SESSION, 1: response})


def wire_table(inp: Inputs) -> list[str]:
    ecqv_request, ecqv_response = ecqv_exchange()
    anon_total = len(inp.request.payload) + len(inp.answer)
    rows = [("anonymous: anon-request (device -> fog)", len(inp.request.payload)),
            ("anonymous: anon-response (fog -> device)", len(inp.answer)),
            ("anonymous: device <-> fog, total", anon_total),
            ("anonymous: anon-grant (fog -> cloud, not the device's link)", len(inp.grant)),
            ("ECQV: session-request (device -> gateway)", len(ecqv_request)),
            ("ECQV: session-response-msg (gateway -> device)", len(ecqv_response)),
            ("ECQV: total", len(ecqv_request) + len(ecqv_response)),
            ("EDHOC (RFC 9528) messages 1-3, suite 2, reference", EDHOC_BYTES)]
    lines = ["bytes on the wire per session set-up (MQTT payloads; topics not counted)",
             "%-62s%8s" % ("message", "bytes")]
    lines += ["%-62s%8d" % row for row in rows]
    lines.append("anonymous / ECQV = %.2f, anonymous / EDHOC = %.2f" % (
        anon_total / (len(ecqv_request) + len(ecqv_response)), anon_total / EDHOC_BYTES))
    return lines


def board_setup(inp: Inputs) -> str:
    """Board code defining the inputs and the operations measured."""
    h = lambda b: "bytes.fromhex(%r)" % b.hex()  # noqa: E731
    return RNG_CLASS + """
from ledgerlink.protocol import anon_device, anon_wire
from ledgerlink.core import cbor, cose, ecies, ecdsa, ecqv, schnorr_zk, session_keys
SITE = %r
dev, priv, secret = %s, %s, %s
fog, cloud = %s, %s
request = anon_device.build_request(SITE, dev, priv, secret, 1, fog, cloud, %d, Rng('device'))
answer = %s
x = anon_wire.anon_secret(secret, 1)
anon_id = anon_wire.anon_id(secret, 1)
ctx = anon_wire.proof_context(request.payload[3:36])
rng = Rng('board')
prepared = anon_device.prepare_request(dev, priv, secret, 1, fog, cloud, rng)
k_u, cert, cert_r, ca_pub, site_pub, gw_id = %s, %s, %s, %s, %s, %s
""" % (SITE, h(inp.device_id), h(inp.device_priv), h(inp.secret), h(inp.fog_pub), h(inp.cloud_pub), TIME_MS,
       h(inp.answer), h(inp.ecqv_secret), h(inp.cert), h(inp.cert_r), h(inp.ca_pub), h(inp.site_pub),
       h(inp.gateway_id))


OPERATIONS = {
    "anon request, whole (device)": "anon_device.build_request(SITE, dev, priv, secret, 1, fog, cloud, 0, rng)",
    "  prepared ahead (while idle)": "anon_device.prepare_request(dev, priv, secret, 1, fog, cloud, rng)",
    "  sealed when sent (online)": "anon_device.seal_request(SITE, prepared, 0, rng)",
    "  Schnorr proof (RFC 8235)": "schnorr_zk.prove(x, anon_id, ctx, rng)",
    "  ECIES ephemeral + 2 ECDH": "[ecies.shared(e[0], q) for e in [ecies.ephemeral(rng)] for q in (fog, cloud)]",
    "  escrow ES256 signature": "ecdsa.sign(priv, ctx)",
    "  x_k and id_k derivation": "(anon_wire.anon_secret(secret, 2), anon_wire.anon_id(secret, 2))",
    "anon answer opened (device)": "anon_device.check_response(request, answer)",
    "ECQV session request (device)": "cose.sign1(cbor.dumps({1: dev, 2: ecqv.create_request(rng)[1], 3: rng(16), "
                                     "4: 0}), priv, dev, b'll/plant-1/dev/x/session')",
    "ECQV session response (device)": "session_keys.derive(ecqv.reconstruct(k_u, cert, cert_r, ca_pub)[0], site_pub, "
                                      "cert, dev, gw_id)",
}


def qemu_table(inp: Inputs, heap_kb: int) -> dict[str, tuple[int, int]]:
    """{operation: (fewest, most) instructions over RUNS measurements}."""
    from ledgerlink.tools.qemu_board import MEASURE, QemuBoard, library_image

    with tempfile.TemporaryDirectory(prefix="ledgerlink-anon-qemu-") as tmp:
        image = library_image(Path(tmp) / "lib.romfs")
        with QemuBoard(image, heap_kb=heap_kb, icount=0) as board:
            board.exec("import gc, time\n" + board_setup(inp), timeout=600)
            table = {}
            for name, stmt in OPERATIONS.items():
                runs = []
                for _ in range(RUNS):
                    out = board.exec(MEASURE % (stmt, stmt), timeout=600)
                    runs.append(int(out.split("ICOUNT")[-1]) * 1000)
                table[name] = (min(runs), max(runs))
    return table


def board32_heap(inp: Inputs) -> dict[str, tuple[int, int]]:
    """{layout: (peak live heap of the request and the answer, heap given)} on board32."""
    from ledgerlink.tools.board_runtime import LAYOUT_HEAP, Board

    h = lambda b: "bytes.fromhex(%r)" % b.hex()  # noqa: E731
    code = RNG_CLASS + """
from ledgerlink.protocol import anon_device
request = anon_device.build_request(%r, %s, %s, %s, 1, %s, %s, %d, Rng('device'))
s = anon_device.check_response(request, %s)
print(s.key.hex())
""" % (SITE, h(inp.device_id), h(inp.device_priv), h(inp.secret), h(inp.fog_pub), h(inp.cloud_pub), TIME_MS,
       h(inp.answer))
    out = {}
    for layout in ("romfs", "files"):
        with Board(layout) as board:
            result = board.run(code)
            if result.stdout.strip().splitlines()[-1] != inp.session.key.hex():
                raise RuntimeError("board32 opened the answer to another key")
            out[layout] = (result.peak_live, LAYOUT_HEAP[layout])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m ledgerlink.tools.anon_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--heap-kb", type=int, choices=(110, 190), default=110, help="QEMU board firmware heap")
    parser.add_argument("--no-qemu", action="store_true")
    parser.add_argument("--no-board32", action="store_true")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    inp = Inputs()
    result: dict = {}
    print("\n".join(wire_table(inp)))
    try:
        if not args.no_qemu:
            table = qemu_table(inp, args.heap_kb)
            result["qemu_instructions"] = table
            print("\nQEMU board (mps2-an385 Cortex-M3, %d KB heap, library in ROMFS, -icount shift=0): "
                  "instructions, fewest and most of %d runs after a first" % (args.heap_kb, RUNS))
            for name, (fewest, most) in table.items():
                print("%-40s%16s%16s" % (name, "{:,}".format(fewest), "{:,}".format(most)))
        if not args.no_board32:
            heaps = board32_heap(inp)
            result["board32_peak_live"] = heaps
            print("\nboard32: peak live heap of making the request and opening the answer (gc.peak_live)")
            for layout, (peak, heap) in heaps.items():
                print("%-40s%10s B of %s B" % ("library from " + layout, "{:,}".format(peak), "{:,}".format(heap)))
    except (FileNotFoundError, RuntimeError, TimeoutError) as exc:
        print("anon_bench: error: %s" % exc, file=sys.stderr)
        return 1
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
