"""``ledgerlink provision --rotate-key``: a board's key rotated on the ledger from a key pair made on the board
(the virtual board, real MicroPython behind mpremote), and the broker password the board computes for it is
the one the site sets when it follows the rotation; the private keys and the password never reach the host."""

from __future__ import annotations

import json
import shutil

import pytest

from ledgerlink.core import ecdsa
from ledgerlink.ledger.state import encoding as enc
from ledgerlink.tools.broker_access import SiteAccess, device_username
from ledgerlink.tools.virtual_board import VirtualBoard
from tests.hardware.test_provision import (assert_no_secret, board_config, board_key, ledger, library,  # noqa: F401
                                           make_flash, proven_device, run_here)

pytestmark = [pytest.mark.micropython, pytest.mark.slow]


def test_provision_rotates_a_boards_key_and_the_board_computes_its_new_password(ledger, library, tmp_path,
                                                                                   capsys):
    folder = ledger.config_path.resolve().parent.parent / "broker"
    access = SiteAccess(folder, "prov")
    access.site_accounts()
    try:
        with VirtualBoard(make_flash(tmp_path / "flash", library, board_config(ledger))) as board:
            root = board.flash.root
            rc, out, err = run_here(capsys, "--port", board.url, "--cluster", ledger.config_path)
            assert rc == 0, out + err
            old_key = board_key(board)
            dev = enc.device_id(ecdsa.public_key(old_key, True))
            username = device_username(dev)
            first = json.loads((root / "ledgerlink.mqtt.json").read_text())

            rc, out, err = run_here(capsys, "--port", board.url, "--cluster", ledger.config_path, "--rotate-key")
            assert rc == 0, out + err
            new_key = board_key(board)
            new_pub = ecdsa.public_key(new_key, True)
            assert new_key != old_key and not (root / "ledgerlink.key.new").exists()
            record = proven_device(ledger, dev)
            assert record[2] == new_pub and record[8] == 2, record           # same device id, new key
            ident = json.loads((root / "ledgerlink.id.json").read_text())
            assert ident["device_id"] == dev.hex() and ident["key_rotated"] is True
            login = json.loads((root / "ledgerlink.mqtt.json").read_text())
            assert login["username"] == username and login["password"] != first["password"]
            assert "rotated the key of device %s (version 2)" % dev.hex() in out

            assert access.follow_record(dev, record)                         # what `up`'s follow loop does
            assert access.login(username)["password"] == login["password"]
            assert login["password"] not in out + err
            assert_no_secret(new_key, [out, err], [tmp_path], {root / "ledgerlink.key"})

            rc, out, err = run_here(capsys, "--port", board.url, "--check")
            assert rc == 0 and "device %s registered" % dev.hex() in out, out + err   # the rotated proof checks
    finally:
        shutil.rmtree(folder)
