"""``ledgerlink provision`` on a ledger with threshold headers (a FROST group key in its genesis): the board's
config carries the group key as part of its trust anchor, the board checks its record proof with it, and a
board whose config lacks it (or names another) is refused before it makes a key."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ledgerlink.core import cbor, ecdsa
from ledgerlink.ledger.cluster import LocalCluster
from ledgerlink.protocol import spv
from ledgerlink.tools import provision
from ledgerlink.tools.micropython_vm import stage
from ledgerlink.tools.virtual_board import VirtualBoard
from tests.hardware.test_provision import board_config, make_flash

PROJECT_ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.micropython, pytest.mark.slow]


@pytest.fixture(scope="module")
def ledger(tmp_path_factory):
    with LocalCluster(tmp_path_factory.mktemp("prov-thr") / "c", 4, log_level="WARNING", threshold=True) as c:
        yield c


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return stage(tmp_path_factory.mktemp("lib"))


def group_key(ledger) -> str:
    return json.loads(ledger.config_path.read_text())["genesis"]["group_key"]


def provision_board(board):
    return subprocess.run([sys.executable, "-m", "ledgerlink.tools.cli", "provision", "--port", board.url,
                           "--board", "virtual", "--cluster", str(board.cluster)], capture_output=True, text=True,
                          timeout=300)


def test_board_with_the_group_key_is_provisioned_and_checks_its_proof(ledger, library, tmp_path):
    config = json.loads(board_config(ledger))
    config["group_key"] = group_key(ledger)
    flash = make_flash(tmp_path / "flash", library, json.dumps(config))
    with VirtualBoard(flash) as board:
        board.cluster = ledger.config_path
        result = provision_board(board)
        assert result.returncode == 0, result.stdout + result.stderr
        doc = cbor.loads((flash / provision.PROOF_FILE).read_bytes())
        keys = list(ledger.config.validators)
        with pytest.raises(Exception, match="different validator set|commit certificate must be"):
            spv.verify_record_proof(doc[3], ledger.config.chain_id, keys)     # the anchor needs the group key
        _, _, value = spv.verify_record_proof(doc[3], ledger.config.chain_id, keys,
                                              group_key=bytes.fromhex(group_key(ledger)))
        pub = ecdsa.public_key(bytes.fromhex((flash / provision.KEY_FILE).read_text().strip()), True)
        assert cbor.loads(value)[2] == pub
        check = subprocess.run([sys.executable, "-m", "ledgerlink.tools.cli", "provision", "--port", board.url,
                                "--board", "virtual", "--cluster", str(ledger.config_path), "--check"],
                               capture_output=True, text=True, timeout=300)
        assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize("group", [None, "02" + "11" * 32])
def test_board_without_the_ledgers_group_key_is_refused_before_a_key_is_made(ledger, library, tmp_path, group):
    config = json.loads(board_config(ledger))
    if group is not None:
        config["group_key"] = group
    flash = make_flash(tmp_path / "flash", library, json.dumps(config))
    with VirtualBoard(flash) as board:
        board.cluster = ledger.config_path
        result = provision_board(board)
    assert result.returncode == provision.EXIT_NOT_DEPLOYED, result.stdout + result.stderr
    assert ("lacks the ledger's FROST group_key" if group is None else "names another FROST group key") in result.stderr
    assert not (flash / provision.KEY_FILE).exists() and not (flash / provision.PENDING_KEY_FILE).exists()
