"""`ledgerlink demo`: one device, one fog CA and one gateway exercising the protocol library in-process.

Each step uses the same code a board runs (`ledgerlink.core`) and prints what happened. A step that
does not give the expected result makes the command exit non-zero.
"""

from __future__ import annotations

import hashlib
import time
from typing import Callable

from ledgerlink.core import cbor, cose, ecdsa, ecqv, merkle, session_keys, smt
from ledgerlink.core.backend import get_backend
from ledgerlink.core.errors import InvalidSignature, InvalidTag, LedgerlinkError

SITE_TOPIC = "ll/demo-site/dev/%s/up"


class DemoFailure(Exception):
    """A step of the demo did not give the expected result."""


def _step(title: str, action: Callable[[], str]) -> None:
    started = time.perf_counter()
    detail = action()
    elapsed_ms = (time.perf_counter() - started) * 1000
    print(f"  [ok] {title:<46} {elapsed_ms:8.2f} ms  {detail}")


def _expect_refused(action: Callable[[], object], errors: tuple[type[Exception], ...]) -> str:
    try:
        action()
    except errors as exc:
        return f"refused: {type(exc).__name__}: {exc}"
    raise DemoFailure("a forged input was accepted")


def run_demo(backend: str | None = None, readings: int = 8) -> int:
    crypto = get_backend(backend)
    print(f"ledgerlink demo (crypto backend: {crypto.name})")
    state: dict = {}

    def make_device_key() -> str:
        priv = crypto.generate_private_key()
        pub = crypto.public_key(priv, True)
        state["device_priv"] = priv
        state["device_pub"] = pub
        state["device_id"] = hashlib.sha256(pub).digest()[:16]
        return "device id " + state["device_id"].hex()

    def sign_reading() -> str:
        reading = {1: state["device_id"], 2: 1, 3: int(time.time() * 1000), 4: {"t": 21.5, "rh": 40.0}}
        topic = (SITE_TOPIC % state["device_id"].hex()).encode()
        frame = cose.sign1(cbor.dumps(reading), state["device_priv"], state["device_id"],
                           external_aad=topic, backend=crypto.name)
        state["signed_frame"] = frame
        state["topic"] = topic
        return f"COSE_Sign1 frame of {len(frame)} bytes"

    def verify_reading() -> str:
        payload = cose.verify_sign1(state["signed_frame"], state["device_pub"],
                                    external_aad=state["topic"], backend=crypto.name)
        return "reading " + repr(cbor.loads(payload)[4])

    def tampered_reading() -> str:
        frame = bytearray(state["signed_frame"])
        frame[-70] ^= 0x01
        return _expect_refused(
            lambda: cose.verify_sign1(bytes(frame), state["device_pub"], external_aad=state["topic"],
                                      backend=crypto.name),
            (InvalidSignature, LedgerlinkError))

    def issue_certificate() -> str:
        ca_priv = crypto.generate_private_key()
        state["ca_pub"] = crypto.public_key(ca_priv)
        k_u, r_u = ecqv.create_request()
        now_s = int(time.time())
        cert, r = ecqv.issue(r_u, ca_priv, serial=hashlib.sha256(r_u).digest()[:8], issuer=b"fog-ca",
                             subject=state["device_id"], valid_from=now_s, valid_until=now_s + 86400)
        state["cert"] = cert
        state["k_u"], state["r"] = k_u, r
        return f"implicit certificate of {len(cert)} bytes (a signed X.509 is ~500)"

    def reconstruct_key() -> str:
        d_u, q_u = ecqv.reconstruct(state["k_u"], state["cert"], state["r"], state["ca_pub"])
        if ecqv.public_key(state["cert"], state["ca_pub"]) != q_u:
            raise DemoFailure("gateway and device disagree on the certified key")
        state["session_priv"], state["session_pub"] = d_u, q_u
        return "d_U*G == e*P_U + Q_CA checked"

    def derive_session() -> str:
        gw_priv = crypto.generate_private_key()
        gw_pub = crypto.public_key(gw_priv)
        device_side = session_keys.derive(state["session_priv"], gw_pub, state["cert"], state["device_id"],
                                          b"gw-1", backend=crypto.name)
        gateway_side = session_keys.derive(gw_priv, state["session_pub"], state["cert"], state["device_id"],
                                           b"gw-1", backend=crypto.name)
        if (device_side.key, device_side.base_iv) != (gateway_side.key, gateway_side.base_iv):
            raise DemoFailure("session keys differ")
        state["session"] = device_side
        return "session id " + device_side.session_id.hex()

    def encrypted_readings() -> str:
        keys = state["session"]
        frames = []
        for seq in range(1, readings + 1):
            reading = {1: state["device_id"], 2: seq, 3: int(time.time() * 1000), 4: {"t": 20 + seq / 10}}
            frames.append(cose.encrypt0(cbor.dumps(reading), keys.key, partial_iv=seq.to_bytes(4, "big"),
                                        base_iv=keys.base_iv, kid=keys.session_id,
                                        external_aad=state["topic"], backend=crypto.name))
        for frame in frames:
            cbor.loads(cose.decrypt0(frame, keys.key, base_iv=keys.base_iv, external_aad=state["topic"],
                                     backend=crypto.name))
        state["encrypted_frames"] = frames
        return f"{len(frames)} COSE_Encrypt0 frames of {len(frames[0])} bytes sealed and opened"

    def tampered_ciphertext() -> str:
        keys = state["session"]
        frame = bytearray(state["encrypted_frames"][0])
        frame[-3] ^= 0x80
        return _expect_refused(
            lambda: cose.decrypt0(bytes(frame), keys.key, base_iv=keys.base_iv, external_aad=state["topic"],
                                  backend=crypto.name),
            (InvalidTag, LedgerlinkError))

    def batch_proof() -> str:
        entries = [state["signed_frame"]] + state["encrypted_frames"]
        tree = merkle.MerkleTree(entries)
        root = tree.root()
        index = len(entries) - 1
        proof = tree.inclusion_proof(index)
        merkle.verify_inclusion(merkle.leaf_hash(entries[index]), index, len(entries), proof, root)
        wrong = _expect_refused(
            lambda: merkle.verify_inclusion(merkle.leaf_hash(entries[0]), index, len(entries), proof, root),
            (LedgerlinkError,))
        return f"batch of {len(entries)}, root {root.hex()[:16]}..., proof of {len(proof)} hashes; wrong leaf {wrong[:8]}"

    def registry_proof() -> str:
        tree = smt.SparseMerkleTree()
        for n in range(200):
            tree.set(hashlib.sha256(b"device-%d" % n).digest(), b"record-%d" % n)
        key = hashlib.sha256(b"device-7").digest()
        tree.set(key, cbor.dumps({"status": "active", "key": state["device_pub"]}))
        root = tree.root()
        smt.verify(root, key, tree.get(key), tree.prove(key))
        absent = hashlib.sha256(b"never-registered").digest()
        smt.verify(root, absent, None, tree.prove(absent))
        return "membership and non-membership proofs verified against the state root"

    steps = [
        ("make a device key pair on the device", make_device_key),
        ("sign a reading (COSE_Sign1, ES256)", sign_reading),
        ("gateway verifies the signed reading", verify_reading),
        ("altered reading is refused", tampered_reading),
        ("fog CA issues an ECQV implicit certificate", issue_certificate),
        ("device reconstructs its session key", reconstruct_key),
        ("device and gateway derive one session key", derive_session),
        ("session-encrypted readings (COSE_Encrypt0)", encrypted_readings),
        ("altered ciphertext is refused", tampered_ciphertext),
        ("batch Merkle tree and inclusion proof", batch_proof),
        ("registry record proof (sparse Merkle)", registry_proof),
    ]
    try:
        for title, action in steps:
            _step(title, action)
    except (DemoFailure, LedgerlinkError) as exc:
        print(f"  [FAILED] {exc}")
        return 1
    print("all steps passed")
    return 0
