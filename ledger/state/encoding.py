"""Encodings shared by the ledger state machine and its clients: state keys, device ids, tx frames.

A transaction is a COSE_Sign1 (tag 18) by the submitter with kid = submitter device-id; its
external_aad is ``cbor(["ledgerlink-tx-v1", chain-id])`` so a transaction signed for one chain does not
verify on another. The builders here are what gateways, admin tools and tests use to make transactions.
"""

from __future__ import annotations

import hashlib
import os
import struct
from hashlib import sha256 as _sha256
from typing import Any, Callable, Mapping

from ledgerlink.core import cbor, cose, p256
from ledgerlink.core.backend import get_backend

from ledgerlink.ledger.state.codes import TxKind

TX_DOMAIN = "ledgerlink-tx-v1"
ROTATE_DOMAIN = "ledgerlink-rotate-v1"
NONCE_LEN = 16
DEVICE_ID_LEN = 16

_head = cbor.head


_BSTR_HEAD = [_head(2, n) for n in range(256)]
_UINT = [_head(0, n) for n in range(256)]
_PAIR = [bytes((0x82, k)) for k in range(24)]
_U16 = struct.Struct(">BH").pack
_U32 = struct.Struct(">BI").pack
_U64 = struct.Struct(">BQ").pack


def _uint(x: int) -> bytes:
    """CBOR of an unsigned integer 0 <= x <= 2**64 - 1."""
    if x < 256:
        return _UINT[x]
    if x < 0x10000:
        return _U16(0x19, x)
    if x < 0x100000000:
        return _U32(0x1A, x)
    return _U64(0x1B, x)


def _id_item(x: Any) -> bytes | None:
    """CBOR of a byte string or an unsigned integer up to 2**64 - 1; None for anything else."""
    t = type(x)
    if t is bytes:
        n = len(x)
        return (_BSTR_HEAD[n] if n < 256 else _head(2, n)) + x
    if t is int and 0 <= x <= cbor.UINT_MAX:
        return _uint(x)
    return None


def _id_cbor(record_id: Any) -> bytes | None:
    """Deterministic CBOR of the usual record ids (bstr, uint, or a list of those), else None."""
    t = type(record_id)
    if t is bytes and len(record_id) < 256:
        return _BSTR_HEAD[len(record_id)] + record_id
    if (t is list or t is tuple) and len(record_id) == 2:
        a = _id_item(record_id[0])
        b = _id_item(record_id[1])
        if a is None or b is None:
            return None
        return b"\x82" + a + b
    item = _id_item(record_id)
    if item is not None:
        return item
    if t is list or t is tuple:
        parts = [_head(4, len(record_id))]
        for x in record_id:
            item = _id_item(x)
            if item is None:
                return None
            parts.append(item)
        return b"".join(parts)
    return None


def state_key(kind: int, record_id: Any) -> bytes:
    """State key of a record: SHA-256(cbor([record-kind, id])).

    ``record_id`` is a bstr, an int, or a list of those (composite ids such as [gateway, batch-id]).
    Byte strings, unsigned integers and lists of them are encoded here directly (the same bytes as
    ``cbor.dumps``); any other id goes through ``cbor.dumps``.
    """
    kind = int(kind)
    body = _id_cbor(record_id) if 0 <= kind < 24 else None
    if body is not None:
        return _sha256(_PAIR[kind] + body).digest()
    if isinstance(record_id, tuple):
        record_id = list(record_id)
    return hashlib.sha256(cbor.dumps([kind, record_id])).digest()


_SIGN1_HEAD = b"\xd2\x84\x43\xa1\x01\x26\xa1\x04\x50"   # 18([h'A10126', {4: 16-byte kid ...
_SIG_HEAD = b"\x58\x40"


def bstr_head(n: int) -> bytes:
    """Shortest CBOR head of a byte string of n bytes."""
    return _BSTR_HEAD[n] if n < 256 else cbor.head(2, n)


def split_sign1(tx: bytes) -> tuple[bytes, bytes, bytes] | None:
    """(kid, payload, signature) of a transaction in the exact deterministic form the builders write
    (protected header {1: -7}, unprotected {4: 16-byte kid}, attached payload, 64-byte signature), so
    that ``cose.decode_sign1`` would give the same fields; None for any other form."""
    if not tx.startswith(_SIGN1_HEAD) or len(tx) < 28:
        return None
    kid = tx[9:25]
    b = tx[25]
    if b < 0x58:
        if b < 0x40:
            return None
        n, i = b - 0x40, 26
    elif b == 0x58:
        n, i = tx[26], 27
        if n < 24:
            return None
    elif b == 0x59:
        n, i = int.from_bytes(tx[26:28], "big"), 28
        if n < 0x100:
            return None
    else:
        return None
    end = i + n
    if len(tx) != end + 66 or tx[end:end + 2] != _SIG_HEAD:
        return None
    return kid, tx[i:end], tx[end + 2:]


def tx_tbs_prefix(chain_id: str) -> bytes:
    """CBOR of the transaction Sig_structure ["Signature1", h'A10126', tx_aad(chain_id), payload] up to
    the payload (which follows as a byte string)."""
    aad = tx_aad(chain_id)
    return b"\x84\x6aSignature1\x43\xa1\x01\x26" + bstr_head(len(aad)) + aad


def compress_pubkey(pubkey: bytes) -> bytes:
    """The 33-byte SEC 1 compressed form of a 33- or 65-byte P-256 key (raises InvalidPoint)."""
    return p256.encode_point(p256.decode_point(bytes(pubkey)), True)


def device_id(pubkey: bytes) -> bytes:
    """Device id: the first 16 bytes of SHA-256 of the compressed identity public key."""
    return hashlib.sha256(compress_pubkey(pubkey)).digest()[:DEVICE_ID_LEN]


def _own_device_id(compressed: bytes) -> bytes:
    """``device_id`` of a compressed key the backend just derived from a private key: already on the
    curve and in compressed form, so it is hashed without being decoded again."""
    return hashlib.sha256(compressed).digest()[:DEVICE_ID_LEN]


def tx_aad(chain_id: str) -> bytes:
    """external_aad of every transaction signature on chain ``chain_id``."""
    return cbor.dumps([TX_DOMAIN, chain_id])


def tx_id(tx: bytes) -> bytes:
    """Transaction id: SHA-256 of the transaction bytes (the tx-root leaf entry)."""
    return hashlib.sha256(bytes(tx)).digest()


def rotation_message(chain_id: str, dev_id: bytes, new_pubkey: bytes, nonce: bytes) -> bytes:
    """Bytes the new key signs in a rotate-key transaction (its proof of possession)."""
    return cbor.dumps([ROTATE_DOMAIN, chain_id, bytes(dev_id), bytes(new_pubkey), bytes(nonce)])


def _rng(rng: Callable[[int], bytes] | None) -> Callable[[int], bytes]:
    return rng or os.urandom


def build_tx(chain_id: str, priv: bytes, kind: int, time_ms: int, fields: Mapping[int, Any],
             nonce: bytes | None = None, kid: bytes | None = None, backend: Any = None,
             rng: Callable[[int], bytes] | None = None) -> bytes:
    """Sign a transaction of ``kind`` with body fields ``fields`` (keys 4 and up) as COSE_Sign1.

    ``kid`` defaults to the device id of ``priv``; ``nonce`` to 16 random bytes.
    """
    be = get_backend(backend)
    if kid is None:
        kid = _own_device_id(be.public_key(priv, True))
    if nonce is None:
        nonce = _rng(rng)(NONCE_LEN)
    body = {1: int(kind), 2: int(time_ms), 3: bytes(nonce)}
    for key, value in fields.items():
        body[int(key)] = value
    return cose.sign1(cbor.dumps(body), priv, kid, tx_aad(chain_id), be)


def registration_request(priv: bytes, role: int, attributes: Mapping[str, Any], time_ms: int,
                         backend: Any = None) -> bytes:
    """The device's own registration-request (its proof of possession), signed by its identity key."""
    be = get_backend(backend)
    pub = be.public_key(priv, True)
    dev = _own_device_id(pub)
    payload = {1: dev, 2: pub, 3: int(role), 4: dict(attributes), 5: int(time_ms)}
    return cose.sign1(cbor.dumps(payload), priv, dev, b"", be)


def register_tx(chain_id: str, admin_priv: bytes, request: bytes, time_ms: int, **kw: Any) -> bytes:
    return build_tx(chain_id, admin_priv, TxKind.REGISTER, time_ms, {4: request}, **kw)


def rotate_key_tx(chain_id: str, priv: bytes, new_priv: bytes, time_ms: int, nonce: bytes | None = None,
                  backend: Any = None, rng: Callable[[int], bytes] | None = None, **kw: Any) -> bytes:
    """Rotate-key transaction: signed by the current key, carrying the new key's proof of possession.

    ``kw`` may carry ``kid`` (the device id, needed once the key has been rotated before).
    """
    be = get_backend(backend)
    kid = kw.pop("kid", None) or device_id(be.public_key(priv, True))
    if nonce is None:
        nonce = _rng(rng)(NONCE_LEN)
    new_pub = be.public_key(new_priv, True)
    pop = be.sign(new_priv, rotation_message(chain_id, kid, new_pub, nonce))
    return build_tx(chain_id, priv, TxKind.ROTATE_KEY, time_ms, {4: new_pub, 5: pop}, nonce=nonce,
                    kid=kid, backend=be, **kw)


def ban_tx(chain_id: str, admin_priv: bytes, target: bytes, reason: str, time_ms: int, **kw: Any) -> bytes:
    return build_tx(chain_id, admin_priv, TxKind.BAN, time_ms, {4: bytes(target), 5: reason}, **kw)


def unban_tx(chain_id: str, admin_priv: bytes, target: bytes, reason: str, time_ms: int, **kw: Any) -> bytes:
    return build_tx(chain_id, admin_priv, TxKind.UNBAN, time_ms, {4: bytes(target), 5: reason}, **kw)


def anchor_tx(chain_id: str, gateway_priv: bytes, batch_id: int | bytes, root: bytes, count: int,
              time_ms: int, **kw: Any) -> bytes:
    return build_tx(chain_id, gateway_priv, TxKind.ANCHOR, time_ms, {4: batch_id, 5: bytes(root), 6: count}, **kw)


def cert_record_tx(chain_id: str, issuer_priv: bytes, cert_hash: bytes, subject: bytes, issuer: bytes,
                   valid_from: int, valid_until: int, serial: bytes, time_ms: int, **kw: Any) -> bytes:
    fields = {4: bytes(cert_hash), 5: bytes(subject), 6: bytes(issuer), 7: valid_from, 8: valid_until,
              9: bytes(serial)}
    return build_tx(chain_id, issuer_priv, TxKind.CERT_RECORD, time_ms, fields, **kw)


def cert_record_tx_for(chain_id: str, issuer_priv: bytes, cert_bytes: bytes, time_ms: int, **kw: Any) -> bytes:
    """cert-record transaction for an ECQV certificate: its hash and fields, not the certificate itself."""
    from ledgerlink.core import ecqv

    cert = ecqv.decode_cert(cert_bytes)
    return cert_record_tx(chain_id, issuer_priv, hashlib.sha256(bytes(cert_bytes)).digest(), cert.subject,
                          cert.issuer, cert.valid_from, cert.valid_until, cert.serial, time_ms, **kw)


def firmware_tx(chain_id: str, maintenance_priv: bytes, image_hash: bytes, version: str, device_class: str,
                image_type: int, time_ms: int, size: int | None = None, **kw: Any) -> bytes:
    fields: dict[int, Any] = {4: bytes(image_hash), 5: version, 6: device_class, 7: image_type}
    if size is not None:
        fields[8] = size
    return build_tx(chain_id, maintenance_priv, TxKind.FIRMWARE, time_ms, fields, **kw)


def provenance_tx(chain_id: str, priv: bytes, material_id: bytes, origin: str, batch: str, form: str,
                  produced_ms: int, material_pubkey: bytes, time_ms: int, **kw: Any) -> bytes:
    fields = {4: bytes(material_id), 5: origin, 6: batch, 7: form, 8: produced_ms, 9: bytes(material_pubkey)}
    return build_tx(chain_id, priv, TxKind.PROVENANCE, time_ms, fields, **kw)


def communication_tx(chain_id: str, priv: bytes, sender: bytes, receiver: bytes, msg_type: str | int,
                     size: int, digest: bytes, time_ms: int, **kw: Any) -> bytes:
    fields = {4: bytes(sender), 5: bytes(receiver), 6: msg_type, 7: size, 8: bytes(digest)}
    return build_tx(chain_id, priv, TxKind.COMMUNICATION, time_ms, fields, **kw)


def warning_entry(warning_id: bytes, offender: bytes, time_ms: int, reason: int, detail: str | None = None) -> dict:
    """One refusal record of a warnings batch."""
    entry: dict[int, Any] = {1: bytes(warning_id), 2: bytes(offender), 3: time_ms, 4: reason}
    if detail is not None:
        entry[5] = detail
    return entry


def warnings_tx(chain_id: str, gateway_priv: bytes, entries: list, time_ms: int, **kw: Any) -> bytes:
    return build_tx(chain_id, gateway_priv, TxKind.WARNINGS, time_ms, {4: list(entries)}, **kw)


__all__ = [
    "state_key", "compress_pubkey", "device_id", "tx_aad", "tx_id", "rotation_message",
    "build_tx", "registration_request", "register_tx", "rotate_key_tx", "ban_tx", "unban_tx", "anchor_tx",
    "cert_record_tx", "cert_record_tx_for", "firmware_tx", "provenance_tx", "communication_tx", "warning_entry", "warnings_tx",
]
