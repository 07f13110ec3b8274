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


def check_hmac(doc, limit=None):
    from ledgerlink.core import kdf
    count = 0
    failures = []
    for group in doc["testGroups"]:
        size = group["tagSize"] // 8
        for test in group["tests"]:
            if limit is not None and count >= limit:
                return count, failures
            count += 1
            tag = kdf.hmac_sha256(bytes.fromhex(test["key"]), bytes.fromhex(test["msg"]))[:size]
            if not _outcome(test["result"], tag == bytes.fromhex(test["tag"])):
                failures.append(test["tcId"])
    return count, failures


def check_hkdf(doc, limit=None):
    from ledgerlink.core import kdf
    count = 0
    failures = []
    for group in doc["testGroups"]:
        for test in group["tests"]:
            if limit is not None and count >= limit:
                return count, failures
            count += 1
            try:
                okm = kdf.hkdf(bytes.fromhex(test["ikm"]), bytes.fromhex(test["salt"]),
                               bytes.fromhex(test["info"]), test["size"])
                ok = okm == bytes.fromhex(test["okm"])
            except LedgerlinkError:
                ok = False
            if not _outcome(test["result"], ok):
                failures.append(test["tcId"])
    return count, failures


def check_aes_ccm(doc, limit=None):
    from ledgerlink.core import ccm
    count = 0
    failures = []
    for group in doc["testGroups"]:
        tag_len = group["tagSize"] // 8
        for test in group["tests"]:
            if limit is not None and count >= limit:
                return count, failures
            count += 1
            key = bytes.fromhex(test["key"])
            nonce = bytes.fromhex(test["iv"])
            aad = bytes.fromhex(test["aad"])
            msg = bytes.fromhex(test["msg"])
            sealed = bytes.fromhex(test["ct"]) + bytes.fromhex(test["tag"])
            try:
                ok = ccm.open(key, nonce, sealed, aad, tag_len) == msg
                if ok and test["result"] == "valid":
                    ok = ccm.seal(key, nonce, msg, aad, tag_len) == sealed
            except LedgerlinkError:
                ok = False
            if not _outcome(test["result"], ok):
                failures.append(test["tcId"])
    return count, failures
