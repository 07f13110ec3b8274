"""Wycheproof checks written in the portable subset: the same functions run under CPython and MicroPython.

Each ``check_*`` takes a parsed Wycheproof JSON document and returns ``(count, failures)``, where
failures lists the tcIds whose outcome contradicts the vector. "acceptable" vectors may go either way.
"""

from ledgerlink.core import ecdh, ecdsa, p256
from ledgerlink.core.errors import LedgerlinkError


def _outcome(result, ok):
    if result == "acceptable":
        return True
    return ok == (result == "valid")


def _public_from_group(group):
    return bytes.fromhex(group["publicKey"]["uncompressed"])


def check_ecdsa(doc, der, limit=None, only_ids=None):
    count = 0
    failures = []
    for group in doc["testGroups"]:
        try:
            pub = _public_from_group(group)
            p256.decode_point(pub)
        except LedgerlinkError:
            pub = None
        for test in group["tests"]:
            if only_ids is not None and test["tcId"] not in only_ids:
                continue
            if limit is not None and count >= limit:
                return count, failures
            count += 1
            msg = bytes.fromhex(test["msg"])
            sig = bytes.fromhex(test["sig"])
            try:
                if pub is None:
                    ok = False
                else:
                    raw = ecdsa.sig_from_der(sig) if der else sig
                    ok = ecdsa.verify(pub, msg, raw)
            except LedgerlinkError:
                ok = False
            if not _outcome(test["result"], ok):
                failures.append(test["tcId"])
    return count, failures


def _private_bytes(hex_text):
    return (int(hex_text, 16)).to_bytes(32, "big")


def check_ecdh(doc, spki, limit=None, only_ids=None):
    count = 0
    failures = []
    for group in doc["testGroups"]:
        for test in group["tests"]:
            if only_ids is not None and test["tcId"] not in only_ids:
                continue
            if limit is not None and count >= limit:
                return count, failures
            count += 1
            try:
                public = bytes.fromhex(test["public"])
                if spki:
                    public = ecdh.public_key_from_spki(public)
                shared = ecdh.shared_secret(_private_bytes(test["private"]), public)
                ok = shared == bytes.fromhex(test["shared"])
            except LedgerlinkError:
                ok = False
            if not _outcome(test["result"], ok):
                failures.append(test["tcId"])
    return count, failures
