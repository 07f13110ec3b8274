"""``ledgerlink admin`` against a running 4-node ledger: registration from a device's own request, verified
``show``, ban/unban, firmware records, headers, validators, receipts, and the error paths (refusals with
their reason codes, unknown devices, bad key files, a wrong trust anchor, a lying node, a stopped ledger)."""

import hashlib
import json
import os
import re
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings, strategies as st

from ledgerlink.core import cbor, merkle
from ledgerlink.core.backend import get_backend
from ledgerlink.ledger.client import LedgerClient
from ledgerlink.ledger.cluster import LocalCluster, generate
from ledgerlink.ledger.state import encoding as enc
from ledgerlink.tools import admin

pytestmark = pytest.mark.slow


def run(*args, cluster=None, check=None):
    """``ledgerlink admin ARGS`` as a process: (exit status, stdout, stderr)."""
    cmd = [sys.executable, "-m", "ledgerlink.tools.cli", "admin"]
    if cluster is not None:
        cmd += ["--cluster", str(cluster)]
    p = subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, timeout=60)
    if check is not None:
        assert p.returncode == check, (p.returncode, p.stdout, p.stderr)
    return p.returncode, p.stdout, p.stderr


def run_here(capsys, *args, cluster=None):
    """The same, in this process (for the argument and file checks, which need no process of their own)."""
    argv = (["--cluster", str(cluster)] if cluster is not None else []) + [str(a) for a in args]
    rc = admin.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ledgerlink admin: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def ledger(tmp_path_factory):
    d = tmp_path_factory.mktemp("admin-ledger")
    with LocalCluster(d / "c", 4, log_level="WARNING") as c:
        yield c


@pytest.fixture(scope="module")
def registered(ledger, tmp_path_factory):
    """A sensor registered from a request made with its own key (``keygen`` + ``request``, as on the device)."""
    d = tmp_path_factory.mktemp("device")
    _, out, _ = run("keygen", "--out", d / "dev.key", check=0)
    dev = re.search(r"device id  ([0-9a-f]{32})", out).group(1)
    pub = re.search(r"public key ([0-9a-f]{66})", out).group(1)
    run("request", "--key", d / "dev.key", "--role", "sensor", "--name", "probe-1", "--location", "hall 2",
        "--out", d / "req.cbor", check=0)
    assert "dev.key" not in os.listdir(ledger.data_dir / "keys")
    _, out, _ = run("register", "--request", d / "req.cbor", "--pubkey", pub, cluster=ledger.config_path, check=0)
    assert "registered device %s: role sensor" % dev in out
    assert re.search(r"inclusion verified against header \d+ \(3 of 4 validator signatures", out)
    return dev, d


def test_show_verifies_the_record_proof(ledger, registered):
    dev, _ = registered
    _, out, _ = run("show", dev, cluster=ledger.config_path, check=0)
    assert re.search(r"status\s+active", out) and re.search(r"role\s+sensor", out)
    assert "location='hall 2'" in out and "name='probe-1'" in out
    admin_id = enc.device_id(get_backend("cpython").public_key(ledger.key("admin"), True)).hex()
    assert "by %s" % admin_id in out
    m = re.search(r"proof verified against header (\d+) \((\d) of 4 validator signatures; 2f\+1 = 3\)", out)
    assert m and int(m.group(2)) >= 3
    with LedgerClient(ledger.config_path) as c:
        assert int(m.group(1)) <= c.latest()["height"]


def test_register_twice_is_refused_with_its_reason(ledger, registered):
    _, d = registered
    rc, _, err = run("register", "--request", d / "req.cbor", cluster=ledger.config_path)
    assert rc == 1 and "code 24 already-exists" in one_line_error(err)


def test_ban_show_unban(ledger, registered):
    dev, _ = registered
    _, out, _ = run("ban", dev, "--reason", "tamper alarm", cluster=ledger.config_path, check=0)
    assert "banned device %s" % dev in out
    _, out, _ = run("show", dev, cluster=ledger.config_path, check=0)
    assert re.search(r"status\s+banned", out) and "'tamper alarm'" in out and "proof verified" in out
    rc, _, err = run("ban", dev, "--reason", "again", cluster=ledger.config_path)
    assert rc == 1 and "code 26 wrong-status" in one_line_error(err)
    run("unban", dev, "--reason", "sensor replaced", cluster=ledger.config_path, check=0)
    _, out, _ = run("show", dev, cluster=ledger.config_path, check=0)
    assert re.search(r"status\s+active", out) and re.search(r"last unban .*'sensor replaced'", out)


def test_unknown_device_is_a_proven_absence(ledger, registered, capsys):
    rc, out, _ = run("show", "00" * 16, cluster=ledger.config_path)
    assert rc == 1
    assert re.search(r"not registered; absence proof verified against header \d+ \(3 of 4", out)
    rc, _, err = run_here(capsys, "show", "not-hex", cluster=ledger.config_path)
    assert rc == 2 and "32 hex digits" in one_line_error(err)


def test_firmware_with_a_maintenance_key(ledger, registered, tmp_path):
    _, out, _ = run("register", "--demo-key", tmp_path / "maint.key", "--role", "maintenance", "--name", "m-1",
                    cluster=ledger.config_path, check=0)
    assert "demo key: made a key pair here" in out and (tmp_path / "maint.key").stat().st_mode & 0o077 == 0
    image = os.urandom(3000)
    (tmp_path / "fw.bin").write_bytes(image)
    _, out, _ = run("firmware", "--image", tmp_path / "fw.bin", "--version", "1.4.2", "--class", "esp32-th",
                    "--maintenance-key", tmp_path / "maint.key", cluster=ledger.config_path, check=0)
    assert hashlib.sha256(image).hexdigest() in out and "(3000 bytes)" in out
    assert "firmware record proof verified against header" in out
    rc, _, err = run("firmware", "--image", tmp_path / "fw.bin", "--version", "1.4.3", "--class", "esp32-th",
                     "--maintenance-key", ledger.data_dir / "keys" / "admin.key", cluster=ledger.config_path)
    assert rc == 1 and "code 22 not-authorized" in one_line_error(err)


def test_headers_and_validators(ledger, registered, capsys):
    _, out, _ = run("headers", cluster=ledger.config_path, check=0)
    rows = [l for l in out.splitlines() if re.match(r"\s*\d+  \d{4}-", l)]
    with LedgerClient(ledger.config_path) as c:
        top = c.latest()["height"]
    assert len(rows) == min(10, top + 1) and int(rows[-1].split()[0]) == top
    assert "linked by prev-hash" in out
    _, out, _ = run("headers", "--from", 0, "--to", 0, cluster=ledger.config_path, check=0)
    assert "1 header 0..0 verified" in out
    rc, _, err = run_here(capsys, "headers", "--to", top + 100, cluster=ledger.config_path)
    assert rc == 1 and "beyond" in one_line_error(err)
    _, out, _ = run("validators", cluster=ledger.config_path, check=0)
    for key in ledger.config.validators:
        assert key.hex() in out
    assert "the ledger names the same set" in out


def test_a_different_trust_anchor_is_caught(ledger, registered, tmp_path):
    dev, _ = registered
    data = json.loads(ledger.config_path.read_text())
    data["validators"][3] = get_backend("cpython").public_key(bytes(range(1, 33)), True).hex()
    for node in data["nodes"]:
        node["key_file"] = str(ledger.data_dir / node["key_file"])
    forged = tmp_path / "cluster.json"
    forged.write_text(json.dumps(data))
    rc, out, _ = run("validators", cluster=forged)
    assert rc == 1 and "DIFFERENT validator set" in out
    rc, _, err = run("show", dev, cluster=forged)
    assert rc == 1 and "does NOT verify" in one_line_error(err)


class _LyingClient:
    """Answers like the ledger, but with a record (or its key) swapped."""

    def __init__(self, real, tamper):
        self.real, self.tamper = real, tamper

    def record(self, kind, record_id):
        res = self.real.record(kind, record_id)
        self.tamper(res["proof"])
        return res

    def close(self):
        self.real.close()


def _context(ledger):
    args = admin.build_parser().parse_args(["--cluster", str(ledger.config_path), "show", "00" * 16])
    return admin.Context(args)


@pytest.mark.parametrize("what", ["record", "key"])
def test_a_lying_node_is_caught(ledger, registered, what):
    dev = bytes.fromhex(registered[0])
    admin_id = enc.device_id(get_backend("cpython").public_key(ledger.key("admin"), True))
    ctx = _context(ledger)
    real = LedgerClient(ledger.config)
    try:
        if what == "record":
            def tamper(proof):
                rec = cbor.loads(proof[3])
                rec[5] = 1 if rec[5] == 2 else 2
                proof[3] = cbor.dumps(rec)
            ctx._client = _LyingClient(real, tamper)
            with pytest.raises(admin.AdminError, match="does NOT verify"):
                ctx.proven_record(1, dev)
        else:
            other = real.record(1, admin_id)["proof"]
            ctx._client = _LyingClient(real, lambda proof: proof.update({2: other[2], 3: other[3], 4: other[4]}))
            with pytest.raises(admin.AdminError, match="another state key"):
                ctx.proven_record(1, dev)
    finally:
        ctx.close()


def test_request_and_key_file_errors(ledger, registered, tmp_path, capsys):
    _, d = registered
    req = bytearray((d / "req.cbor").read_bytes())
    req[-1] ^= 1
    (tmp_path / "bad.cbor").write_bytes(bytes(req))
    rc, _, err = run_here(capsys, "register", "--request", tmp_path / "bad.cbor", cluster=ledger.config_path)
    assert rc == 2 and "proof of possession" in one_line_error(err)
    rc, _, err = run_here(capsys, "register", "--request", d / "req.cbor", "--name", "other", cluster=ledger.config_path)
    assert rc == 2 and "the device signed its attributes" in one_line_error(err)
    rc, _, err = run_here(capsys, "register", "--pubkey", "02" + "11" * 32, "--name", "x", cluster=ledger.config_path)
    assert rc == 2 and "--request" in one_line_error(err)
    (tmp_path / "garbage.key").write_text("not a key\n")
    rc, _, err = run("--admin-key", tmp_path / "garbage.key", "ban", registered[0], "--reason", "x",
                     cluster=ledger.config_path)
    assert rc == 2 and "must hold a P-256 private key" in one_line_error(err)
    rc, _, err = run_here(capsys, "ban", registered[0], "--reason", "x", "--admin-key", tmp_path / "missing.key",
                     cluster=ledger.config_path)
    assert rc == 2 and "does not exist" in one_line_error(err)
    rc, _, err = run_here(capsys, "keygen", "--out", d / "dev.key")
    assert rc == 2 and "not overwriting" in one_line_error(err)


def test_ledger_down_is_one_line(tmp_path):
    path = generate(tmp_path / "down", 4)
    t0 = time.monotonic()
    rc, out, err = run("show", "00" * 16, cluster=path)
    assert rc == 3 and out == "" and "no ledger node answered" in one_line_error(err)
    assert time.monotonic() - t0 < 20
    rc, _, err = run("validators", cluster=tmp_path / "nothing.json")
    assert rc == 2 and "does not exist" in one_line_error(err)


def _receipt(ledger, frames, leaf):
    """An anchored batch of ``frames`` and the receipt of ``frames[leaf]`` as the gateway builds it."""
    hashes = [hashlib.sha256(f).digest() for f in frames]
    tree = merkle.MerkleTree(hashes)
    tx = enc.anchor_tx(ledger.config.chain_id, ledger.key("gateway"), os.urandom(16), tree.root(), len(frames),
                       int(time.time() * 1000))
    with LedgerClient(ledger.config_path) as c:
        res = c.submit(tx)
        assert res["status"] == "committed" and res["code"] == 0
        p = c.tx_proof(enc.tx_id(tx))
    return cbor.dumps({0: 1, 1: hashes[leaf], 2: 7, 3: leaf, 4: len(frames), 5: tree.inclusion_proof(leaf),
                       6: {1: tx, 2: p["index"], 3: p["size"], 4: list(p["proof"])}, 7: p["certified_header"]})


def test_verify_receipt(ledger, registered, tmp_path):
    frames = [b"\xd2frame-%d" % i for i in range(5)]
    receipt = _receipt(ledger, frames, 3)
    (tmp_path / "r.cbor").write_bytes(receipt)
    (tmp_path / "f.hex").write_text(frames[3].hex() + "\n")
    (tmp_path / "other.bin").write_bytes(frames[2])
    _, out, _ = run("verify-receipt", tmp_path / "r.cbor", "--frame", tmp_path / "f.hex",
                    cluster=ledger.config_path, check=0)
    assert "receipt verified: frame %s (not a reading) is leaf 3 of 5" % hashlib.sha256(frames[3]).hexdigest() in out
    assert re.search(r"proof verified against header \d+ \(3 of 4", out)
    rc, out, err = run("verify-receipt", tmp_path / "r.cbor", "--frame", tmp_path / "other.bin",
                       cluster=ledger.config_path)
    assert rc == 1 and "does NOT verify" in err and "receipt verified" not in out
    r = cbor.loads(receipt)
    r[5] = [bytes(32)] + r[5][1:]
    (tmp_path / "bad.cbor").write_bytes(cbor.dumps(r))
    rc, _, err = run("verify-receipt", tmp_path / "bad.cbor", "--frame", tmp_path / "f.hex", cluster=ledger.config_path)
    assert rc == 1 and "does NOT verify" in err


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=300).map(lambda b: bytes([0x80 | b[0]]) + b[1:]), st.booleans())
def test_read_blob_raw_and_hex(tmp_path_factory, data, as_hex):
    p = tmp_path_factory.mktemp("blob") / "f"
    if as_hex:
        p.write_text(data.hex().upper() if len(data) % 2 else " " + data.hex() + "\n")
    else:
        p.write_bytes(data)
    assert admin.read_blob(str(p), "test") == data
