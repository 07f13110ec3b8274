"""Every backend against Wycheproof, and byte-identical deterministic results across backends."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledgerlink.core import ecdh, ecdsa
from ledgerlink.core.backend import get_backend
from ledgerlink.core.errors import InvalidKey, InvalidTag, LedgerlinkError
from tests.conftest import load_vectors

FAST = ["cpython", "pycryptodome"]
ALL = ["portable"] + FAST


def _tests(name):
    doc = load_vectors("wycheproof/" + name)
    cases = [(group, test) for group in doc["testGroups"] for test in group["tests"]]
    assert len(cases) == doc["numberOfTests"]
    return cases


def _agrees(result: str, ok: bool) -> bool:
    return result == "acceptable" or ok == (result == "valid")


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("name, der", [("ecdsa_secp256r1_sha256_p1363_test.json", False),
                                       ("ecdsa_secp256r1_sha256_test.json", True)])
def test_wycheproof_ecdsa(backend, name, der):
    crypto = get_backend(backend)
    failures = []
    for group, test in _tests(name):
        pub = bytes.fromhex(group["publicKey"]["uncompressed"])
        sig = bytes.fromhex(test["sig"])
        try:
            ok = crypto.verify(pub, bytes.fromhex(test["msg"]), ecdsa.sig_from_der(sig) if der else sig)
        except LedgerlinkError:
            ok = False
        if not _agrees(test["result"], ok):
            failures.append(test["tcId"])
    assert failures == []


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("name, spki", [("ecdh_secp256r1_ecpoint_test.json", False),
                                        ("ecdh_secp256r1_test.json", True)])
def test_wycheproof_ecdh(backend, name, spki):
    crypto = get_backend(backend)
    failures = []
    for _, test in _tests(name):
        try:
            public = bytes.fromhex(test["public"])
            if spki:
                public = ecdh.public_key_from_spki(public)
            ok = crypto.ecdh(int(test["private"], 16).to_bytes(32, "big"), public) == bytes.fromhex(test["shared"])
        except LedgerlinkError:
            ok = False
        if not _agrees(test["result"], ok):
            failures.append(test["tcId"])
    assert failures == []


@pytest.mark.parametrize("backend", FAST)
def test_wycheproof_symmetric(backend):
    crypto = get_backend(backend)
    failures = []
    for group, test in _tests("aes_ccm_test.json"):
        tag_len = group["tagSize"] // 8
        sealed = bytes.fromhex(test["ct"] + test["tag"])
        try:
            ok = crypto.ccm_open(bytes.fromhex(test["key"]), bytes.fromhex(test["iv"]), sealed,
                                 bytes.fromhex(test["aad"]), tag_len) == bytes.fromhex(test["msg"])
        except LedgerlinkError:
            ok = False
        if not _agrees(test["result"], ok):
            failures.append(("ccm", test["tcId"]))
    for group, test in _tests("hmac_sha256_test.json"):
        tag = crypto.hmac_sha256(bytes.fromhex(test["key"]), bytes.fromhex(test["msg"]))[:group["tagSize"] // 8]
        if not _agrees(test["result"], tag == bytes.fromhex(test["tag"])):
            failures.append(("hmac", test["tcId"]))
    for _, test in _tests("hkdf_sha256_test.json"):
        try:
            ok = crypto.hkdf(bytes.fromhex(test["ikm"]), bytes.fromhex(test["salt"]), bytes.fromhex(test["info"]),
                             test["size"]) == bytes.fromhex(test["okm"])
        except LedgerlinkError:
            ok = False
        if not _agrees(test["result"], ok):
            failures.append(("hkdf", test["tcId"]))
    assert failures == []


@settings(max_examples=10, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32), peer_seed=st.binary(min_size=32, max_size=32),
       msg=st.binary(max_size=100), key=st.binary(min_size=16, max_size=16),
       nonce=st.binary(min_size=13, max_size=13), aad=st.binary(max_size=30))
def test_deterministic_results_are_byte_identical(seed, peer_seed, msg, key, nonce, aad):
    draws = [seed, peer_seed]
    crypto = {name: get_backend(name) for name in ALL}
    try:
        priv = crypto["portable"].generate_private_key(lambda n: draws.pop(0))
        peer = crypto["portable"].generate_private_key(lambda n: draws.pop(0))
    except (IndexError, LedgerlinkError):
        return  # a draw outside [1, n-1]: astronomically rare, nothing to compare
    results = set()
    for c in crypto.values():
        results.add((c.public_key(priv), c.public_key(priv, True), c.sign(priv, msg),
                     c.ecdh(priv, c.public_key(peer)), c.hkdf(msg, aad, nonce, 42), c.hmac_sha256(key, msg),
                     c.ccm_seal(key, nonce, msg, aad, 8)))
    assert len(results) == 1
    for c in crypto.values():
        for other in crypto.values():
            assert other.verify(c.public_key(priv), msg, c.sign(priv, msg))


def test_public_key_cache_drops_the_least_recently_used(monkeypatch):
    from ledgerlink import cpython_backend

    monkeypatch.setattr(cpython_backend, "PUBLIC_KEY_CACHE", 4)
    be = cpython_backend.CryptographyBackend()
    keys = [be.generate_private_key() for _ in range(6)]
    pubs = [be.public_key(k) for k in keys]
    sigs = [be.sign(k, b"m") for k in keys]
    for i in range(4):
        assert be.verify(pubs[i], b"m", sigs[i])
    assert be.verify(pubs[0], b"m", sigs[0])            # 0 used again: 1 is now the oldest
    assert be.verify(pubs[4], b"m", sigs[4])
    assert list(be._pub_cache) == [pubs[2], pubs[3], pubs[0], pubs[4]]
    assert not be.verify(pubs[5], b"m", sigs[4]) and len(be._pub_cache) == 4


def test_public_key_cache_is_shared_safely_between_threads(monkeypatch):
    import threading

    import ledgerlink.cpython_backend as cb

    be = cb.CryptographyBackend()
    monkeypatch.setattr(cb, "PUBLIC_KEY_CACHE", 16)             # evictions and reorders all the time
    privs = [be.generate_private_key() for _ in range(40)]
    pubs = [be.public_key(p, True) for p in privs]
    sigs = [be.sign(p, b"m") for p in privs]
    errors: list[str] = []

    def run(offset: int) -> None:
        try:
            for i in range(3000):
                k = (i + offset) % len(pubs)
                key = pubs[k] if i % 3 else bytearray(pubs[k])
                if not be.verify(key, b"m", sigs[k]) or be.verify(key, b"n", sigs[k]):
                    errors.append("wrong answer for key %d" % k)
        except Exception as exc:  # noqa: BLE001 - any exception is the failure under test
            errors.append(repr(exc))

    threads = [threading.Thread(target=run, args=(j,)) for j in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_ccm_context_cache_is_bounded_and_checks_every_call(monkeypatch):
    from ledgerlink import cpython_backend

    monkeypatch.setattr(cpython_backend, "CCM_CONTEXT_CACHE", 2)
    be = cpython_backend.CryptographyBackend()
    ref = get_backend("portable")
    keys = [bytes([i]) * 16 for i in range(5)]
    nonce, aad = bytes(13), b"aad"
    for key in keys + keys:                              # contexts made, dropped and made again
        sealed = be.ccm_seal(key, nonce, b"reading", aad, 8)
        assert sealed == ref.ccm_seal(key, nonce, b"reading", aad, 8)
        assert be.ccm_open(key, nonce, sealed, aad, 8) == b"reading"
        with pytest.raises(InvalidTag):
            be.ccm_open(key, nonce, sealed[:-1] + bytes([sealed[-1] ^ 1]), aad, 8)
        for bad_nonce in (bytes(6), bytes(14)):          # the context is cached, the nonce still checked
            with pytest.raises(InvalidKey):
                be.ccm_open(key, bad_nonce, sealed, aad, 8)
        assert len(be._ccm_cache) <= 2
    with pytest.raises(InvalidKey):
        be.ccm_open(bytes(15), nonce, sealed, aad, 8)
