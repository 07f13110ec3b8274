"""``ledgerlink provision`` end to end: a 4-node ledger, the virtual board (real MicroPython behind mpremote),
the key made on the board, registration, proofs verified on the host and on the board; and the error
paths (no port, no board, no library, ledger down, no admin key, a refused registration, --new-key)."""

import json
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ledgerlink.core import cbor, ecdsa
from ledgerlink.protocol import spv
from ledgerlink.core.errors import LedgerlinkError
from ledgerlink.ledger.client import LedgerClient
from ledgerlink.ledger.cluster import LocalCluster, generate
from ledgerlink.ledger.state import encoding as enc
from ledgerlink.ledger.state.codes import RecordKind
from ledgerlink.tools import provision
from ledgerlink.tools.micropython_vm import stage
from ledgerlink.tools.virtual_board import VirtualBoard

PROJECT_ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.micropython, pytest.mark.slow]


@pytest.fixture(scope="module")
def ledger(tmp_path_factory):
    with LocalCluster(tmp_path_factory.mktemp("prov-ledger") / "c", 4, log_level="WARNING") as c:
        yield c


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """The compiled library, staged once and copied into each board's flash."""
    return stage(tmp_path_factory.mktemp("lib"))


def board_config(ledger):
    config = json.loads((PROJECT_ROOT / "hardware" / "config.example.json").read_text())
    config.pop("wifi_file")
    config.update(validator_keys=[k.hex() for k in ledger.config.validators], device_name="press-07")
    return json.dumps(config)


def make_flash(path, library=None, config=None):
    path.mkdir(parents=True)
    if library is not None:
        shutil.copytree(library / "lib", path / "lib")
    if config is not None:
        (path / "ledgerlink.json").write_text(config)
    return path


@pytest.fixture(scope="module")
def board(ledger, library, tmp_path_factory):
    flash = make_flash(tmp_path_factory.mktemp("board") / "flash", library, board_config(ledger))
    with VirtualBoard(flash) as b:
        yield b


def snapshot(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run_here(capsys, *args):
    rc = provision.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ledgerlink provision: error: "), err
    return lines[0]


def board_key(board, name="ledgerlink.key"):
    return bytes.fromhex((board.flash.root / name).read_text().strip())


def proven_device(ledger, dev):
    """The device record as the ledger proves it now, checked here with spv."""
    with LedgerClient(ledger.config_path) as client:
        res = client.record(int(RecordKind.DEVICE), dev)
    _, key, value = spv.verify_record_proof(cbor.dumps(res["proof"]), ledger.config.chain_id,
                                           list(ledger.config.validators))
    assert key == spv.state_key(int(RecordKind.DEVICE), dev)
    return None if value is None else cbor.loads(value)


def assert_no_secret(secret, texts, roots, skip):
    forms = [secret, secret.hex().encode(), secret.hex().upper().encode()]
    for text in texts:
        assert not any(f in text.encode() for f in forms)
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and path not in skip:
                data = path.read_bytes()
                assert not any(f in data for f in forms), path


@pytest.fixture(scope="module")
def provisioned(ledger, board):
    """The first provisioning, through the `ledgerlink` command as a user runs it."""
    result = subprocess.run([sys.executable, "-m", "ledgerlink.tools.cli", "provision", "--port", board.url,
                             "--board", "virtual", "--cluster", str(ledger.config_path), "--location", "hall 2"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_board_key_registered_and_proof_stored(ledger, board, provisioned):
    priv = board_key(board)
    pub = ecdsa.public_key(priv, True)
    dev = enc.device_id(pub)
    assert not (board.flash.root / "ledgerlink.key.new").exists()
    assert "provisioned device %s" % dev.hex() in provisioned.stdout
    assert "the board made a new key pair" in provisioned.stdout
    assert re.search(r"device record proof verified against header \d+ \(\d of 4", provisioned.stdout)

    record = proven_device(ledger, dev)
    assert record[2] == pub and record[1] == dev and record[5] == 1
    assert record[4] == {"name": "press-07", "location": "hall 2"}

    ident = json.loads((board.flash.root / "ledgerlink.id.json").read_text())
    assert ident == {"device_id": dev.hex(), "public_key": pub.hex(), "chain_id": ledger.config.chain_id,
                     "height": ident["height"]}
    doc = cbor.loads((board.flash.root / "ledgerlink.reg.cbor").read_bytes())
    assert doc[1] == ledger.config.chain_id and doc[2] == dev
    header, key, value = spv.verify_record_proof(doc[3], doc[1], list(ledger.config.validators))
    assert header.height == ident["height"] and cbor.loads(value)[2] == pub
    with LedgerClient(ledger.config_path) as client:
        assert client.status(doc[4])["status"] == "committed"

    assert_no_secret(priv, [provisioned.stdout, provisioned.stderr], [board.flash.root, ledger.data_dir],
                     skip={board.flash.root / "ledgerlink.key"})


def test_board_reverifies_and_catches_a_tampered_proof(board, provisioned, capsys):
    rc, out, _ = run_here(capsys, "--port", board.url, "--check")
    assert rc == 0 and "the board verified its stored proof" in out
    path = board.flash.root / "ledgerlink.reg.cbor"
    good = path.read_bytes()
    doc = cbor.loads(good)
    proof = cbor.loads(doc[3])
    record = cbor.loads(proof[3])
    record[4] = dict(record[4], name="someone-else")
    proof[3] = cbor.dumps(record)
    doc[3] = cbor.dumps(proof)
    path.write_bytes(cbor.dumps(doc))
    try:
        rc, _, err = run_here(capsys, "--port", board.url, "--check")
    finally:
        path.write_bytes(good)
    assert rc == 1 and "does NOT verify on the board" in one_line_error(err)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_changed_byte_of_the_stored_proof_is_caught(ledger, board, provisioned, data):
    """The board's check (run here under CPython) refuses the stored file with any byte changed."""
    checks = {}
    exec(provision.BOARD_COMMON, checks)
    pub = ecdsa.public_key(board_key(board), True)
    doc = cbor.loads((board.flash.root / "ledgerlink.reg.cbor").read_bytes())
    doc.pop(4, None)
    stored = cbor.dumps(doc)
    trusted = list(ledger.config.validators)
    assert checks["verify_stored"](stored, trusted, pub)[0] == doc[2]
    i = data.draw(st.integers(0, len(stored) - 1))
    bad = bytearray(stored)
    bad[i] ^= data.draw(st.integers(1, 255))
    with pytest.raises((LedgerlinkError, ValueError, KeyError, TypeError, IndexError)):
        checks["verify_stored"](bytes(bad), trusted, pub)


def test_key_is_kept_unless_new_key_and_force(ledger, board, provisioned, capsys):
    old = board_key(board)
    # A --new-key --force run that stopped after the board made its new key (the board's own program).
    stopped = provision.Board(board.url, "ledgerlink.json").run(provision.PREPARE, {
        "validators": [k.hex() for k in ledger.config.validators], "name": None, "model": None,
        "location": None, "role": 1, "time_ms": 0, "new_key": True, "force": True})
    assert stopped["status"] == "ok" and stopped["key"] == "new" and stopped["had_key"]
    pending = board_key(board, "ledgerlink.key.new")
    assert pending != old

    rc, out, _ = run_here(capsys, "--port", board.url, "--cluster", ledger.config_path)
    assert rc == 0, out
    assert "the board keeps its key" in out and "already registered" in out
    assert board_key(board) == old and board_key(board, "ledgerlink.key.new") == pending

    before = snapshot(board.flash.root)
    rc, _, err = run_here(capsys, "--port", board.url, "--cluster", ledger.config_path, "--new-key")
    assert rc == 2 and "add --force" in one_line_error(err)
    assert snapshot(board.flash.root) == before

    rc, out, err = run_here(capsys, "--port", board.url, "--cluster", ledger.config_path, "--new-key", "--force")
    assert rc == 0, err
    assert "reuses the key made by an earlier unfinished provision" in out
    assert board_key(board) == pending and not (board.flash.root / "ledgerlink.key.new").exists()
    assert "old device id stays registered" in out
    new_pub = ecdsa.public_key(pending, True)
    new_dev = enc.device_id(new_pub)
    assert proven_device(ledger, new_dev)[2] == new_pub
    assert proven_device(ledger, enc.device_id(ecdsa.public_key(old, True)))[5] == 1
    assert json.loads((board.flash.root / "ledgerlink.id.json").read_text())["device_id"] == new_dev.hex()
    assert_no_secret(old, [out, err], [], skip=set())
    assert_no_secret(pending, [out, err], [], skip=set())


def test_refused_registration_prints_the_code_and_leaves_no_key(ledger, library, tmp_path, capsys):
    """The gateway's key is registered but may not register devices: the ledger refuses with code 22."""
    flash = make_flash(tmp_path / "flash", library, board_config(ledger))
    before = snapshot(flash)
    with VirtualBoard(flash) as fresh:
        rc, _, err = run_here(capsys, "--port", fresh.url, "--cluster", ledger.config_path,
                              "--admin-key", ledger.data_dir / "keys" / "gateway.key")
    line = one_line_error(err)
    assert rc == 1 and "refused by the ledger: code 22 not-authorized" in line and "removed again" in line
    assert snapshot(flash) == before


def test_board_errors_write_nothing(ledger, tmp_path, capsys):
    rc, _, err = run_here(capsys, "--cluster", ledger.config_path)
    assert rc == 2 and "--port is required" in one_line_error(err)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    rc, _, err = run_here(capsys, "--port", "socket://127.0.0.1:%d" % closed, "--cluster", ledger.config_path)
    assert rc == 3 and "no MicroPython board answers" in one_line_error(err)

    flash = make_flash(tmp_path / "bare", config=board_config(ledger))
    before = snapshot(flash)
    with VirtualBoard(flash) as bare:
        rc, _, err = run_here(capsys, "--port", bare.url, "--cluster", ledger.config_path)
    assert rc == 4 and "ledgerlink deploy" in one_line_error(err)
    assert snapshot(flash) == before


def test_ledger_and_key_errors_come_before_the_board(ledger, library, tmp_path, capsys):
    flash = make_flash(tmp_path / "flash", library, board_config(ledger))
    before = snapshot(flash)
    down = generate(tmp_path / "down")
    with VirtualBoard(flash) as b:
        rc, _, err = run_here(capsys, "--port", b.url, "--cluster", down)
        assert rc == 5 and "is the ledger running?" in one_line_error(err)
        rc, _, err = run_here(capsys, "--port", b.url, "--cluster", ledger.config_path,
                              "--admin-key", tmp_path / "missing.key")
        assert rc == 2 and "--admin-key" in one_line_error(err) and "does not exist" in err
        rc, _, err = run_here(capsys, "--port", b.url)
        assert rc == 2 and "--cluster" in one_line_error(err)
        rc, _, err = run_here(capsys, "--port", b.url, "--board", "rpi", "--cluster", ledger.config_path)
        assert rc == 2 and "runs CPython" in one_line_error(err) and "admin request" in err
        rc, _, err = run_here(capsys, "--port", b.url, "--board", "no-such", "--cluster", ledger.config_path)
        assert rc == 2 and "unknown board" in one_line_error(err)
        assert b.execs == 0
    assert snapshot(flash) == before


def test_broker_login_made_and_stored_on_the_board(ledger, library, tmp_path, capsys):
    """With the site's broker accounts beside the cluster config (``ledgerlink up``'s layout), provision
    makes the device's account and stores its login, with the site's broker-login key, on the board."""
    from ledgerlink.tools.broker_access import SiteAccess, password_matches

    folder = ledger.config_path.resolve().parent.parent / "broker"
    access = SiteAccess(folder, "prov")
    access.site_accounts()
    try:
        with VirtualBoard(make_flash(tmp_path / "flash", library, board_config(ledger))) as fresh:
            rc, out, err = run_here(capsys, "--port", fresh.url, "--cluster", ledger.config_path)
            assert rc == 0, out + err
            login = json.loads((fresh.flash.root / "ledgerlink.mqtt.json").read_text())
            dev = enc.device_id(ecdsa.public_key(board_key(fresh), True))
        assert login["username"] == "ll-" + dev.hex() and "broker account %s" % login["username"] in out
        assert password_matches(access.load()[login["username"]], login["password"])
        assert login["login_key"] == access.login_public().hex()          # for its password after a key rotation
        assert access.credentials_path(login["username"]).stat().st_mode & 0o777 == 0o600
        assert login["password"] not in out + err
    finally:
        shutil.rmtree(folder)
