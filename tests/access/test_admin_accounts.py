"""``ledgerlink admin`` keeps the broker accounts of a site: broker-login makes or rotates a device's,
register makes it, ban disables it (the device's connection ends) and unban enables it again."""

from __future__ import annotations

import json
import time

import pytest

from ledgerlink.tools import admin
from tests.access.conftest import CRYPTO, Client, Dev


def _admin(capsys, *args) -> tuple[int, str]:
    rc = admin.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out + err


def test_broker_login_rotate_ban_and_unban(stack, capsys, tmp_path):
    cluster = stack.cluster.config_path
    dev = Dev(stack)
    rc, out = _admin(capsys, "--cluster", cluster, "broker-login", dev.id.hex())
    assert rc == 0 and "broker account %s (role device)" % dev.username in out, out
    first = dev.login()
    assert Client(stack, dev.username, first).accepted            # before it is registered: it may send its request
    rc, out = _admin(capsys, "--cluster", cluster, "broker-login", dev.id.hex(), "--rotate")
    assert rc == 0 and "new password" in out
    assert not Client(stack, dev.username, first).accepted       # the old password stops working
    request = tmp_path / "req.cbor"
    request.write_bytes(dev.registration())
    rc, out = _admin(capsys, "--cluster", cluster, "register", "--request", request)
    assert rc == 0 and "broker account %s: its login is in" % dev.username in out, out
    login = json.loads(stack.access.credentials_path(dev.username).read_text())
    c = Client(stack, dev.username, login)
    assert c.accepted
    t0 = time.monotonic()
    rc, out = _admin(capsys, "--cluster", cluster, "ban", dev.id.hex(), "--reason", "admin test")
    assert rc == 0 and "disabled: disconnected now" in out, out
    assert c.disconnected.wait(1.0) and time.monotonic() - t0 < 5
    assert not Client(stack, dev.username, login).accepted
    rc, out = _admin(capsys, "--cluster", cluster, "unban", dev.id.hex())
    assert rc == 0 and "enabled again" in out
    again = Client(stack, dev.username, login)
    assert again.accepted
    again.close()


def test_a_ban_by_any_admin_disables_the_account_within_a_second(stack, register):
    from ledgerlink.ledger.state import encoding as enc

    [dev] = register(1)
    c = dev.client()
    stack.follow_bans()                                           # caught up before the ban
    tx = enc.ban_tx(stack.chain_id, stack.cluster.key("admin"), dev.id, "banned elsewhere", int(time.time() * 1000))
    res = stack.ledger.submit(tx)                                 # not through Stack.ban: as another admin would
    committed = time.monotonic()
    assert res.get("status") == "committed", res
    lines: list[str] = []
    while not c.disconnected.is_set() and time.monotonic() - committed < 1.0:
        lines += stack.follow_bans()                              # what `ledgerlink up` runs every 0.25 s
        time.sleep(0.25)
    assert c.disconnected.is_set(), lines
    assert any("%s disabled: banned" % dev.username in line for line in lines), lines
    assert not Client(stack, dev.username, dev.login()).accepted


def _follow_until(stack, done, limit_s: float = 1.0) -> tuple[list[str], float]:
    """``stack.follow_bans()`` every 0.25 s (as `ledgerlink up` runs it) until ``done()`` or ``limit_s``."""
    t0 = time.monotonic()
    lines: list[str] = []
    while not done() and time.monotonic() - t0 < limit_s:
        lines += stack.follow_bans()
        time.sleep(0.02 if done() else 0.25)
    return lines, time.monotonic() - t0


def test_a_key_rotation_on_the_ledger_replaces_the_broker_password_within_a_second(stack, register):
    from ledgerlink.ledger.state import encoding as enc
    from ledgerlink.tools.broker_access import device_login

    [dev] = register(1)
    old = dev.login()
    c = dev.client()
    stack.follow_bans()                                           # caught up before the rotation
    new_priv = CRYPTO.generate_private_key()
    res = stack.ledger.submit(enc.rotate_key_tx(stack.chain_id, dev.priv, new_priv, int(time.time() * 1000)))
    assert res.get("status") == "committed" and res.get("code") == 0, res     # the device's own transaction
    lines, took = _follow_until(stack, c.disconnected.is_set)
    assert c.disconnected.is_set() and took < 1.0, lines          # the old login's connection ends
    print("key rotation: the old login's connection ended %.0f ms after the commit (follow every 0.25 s)"
          % (took * 1000))
    assert any("%s: new password for the device's rotated key (version 2)" % dev.username in l for l in lines), lines
    assert not Client(stack, dev.username, old).accepted          # the old password is refused
    assert device_login(dev.id, dev.priv, stack.access.login_public()) != stack.login(dev.username)
    new = device_login(dev.id, new_priv, stack.access.login_public())     # what the device computes with its new key
    assert new == stack.login(dev.username)
    again = Client(stack, dev.username, new)
    assert again.accepted
    again.close()


def test_an_account_follows_only_a_proven_record(stack, register):
    from ledgerlink.core import cbor
    from ledgerlink.ledger.state.codes import RecordKind
    from ledgerlink.tools.broker_access import AccessError, proven_device_record

    [dev] = register(1)
    record = proven_device_record(stack.ledger, stack.chain_id, stack.validators, dev.id)
    assert record[2] == dev.core.public_key
    proof = stack.ledger.record(int(RecordKind.DEVICE), dev.id)["proof"]
    forged = dict(cbor.loads(proof[3]))
    forged[2] = CRYPTO.public_key(CRYPTO.generate_private_key(), True)    # a lying node's key of its choosing
    proof[3] = cbor.dumps(forged)

    class Lying:
        def record(self, kind, dev_id):
            return {"ok": True, "proof": proof}

    with pytest.raises(AccessError, match="does not verify"):
        proven_device_record(Lying(), stack.chain_id, stack.validators, dev.id)
    with pytest.raises(AccessError, match="older header"):
        proven_device_record(stack.ledger, stack.chain_id, stack.validators, dev.id, stack.height() + 5)


def test_a_ban_committed_while_nobody_followed_is_caught_up(stack, register):
    from ledgerlink.ledger.state import encoding as enc

    [dev] = register(1)
    c = dev.client()
    stack.follow_bans()
    stack.followed = None                                         # as after a restart of `ledgerlink up`
    tx = enc.ban_tx(stack.chain_id, stack.cluster.key("admin"), dev.id, "banned while up was down",
                    int(time.time() * 1000))
    assert stack.ledger.submit(tx).get("status") == "committed"
    lines, took = _follow_until(stack, c.disconnected.is_set)
    assert c.disconnected.is_set(), lines
    assert any("%s disabled: banned" % dev.username in line for line in lines), lines


def test_admin_rotate_key_on_a_device_writes_its_new_login(stack, register, capsys, tmp_path):
    [dev] = register(1)
    key, new_key = tmp_path / "dev.key", tmp_path / "dev-new.key"
    key.write_text(dev.priv.hex() + "\n")
    login_file = tmp_path / "login.json"                          # what the device holds (provision's file)
    login_file.write_text(stack.access.credentials_path(dev.username).read_text())
    old = json.loads(login_file.read_text())
    c = Client(stack, dev.username, old)
    assert c.accepted
    stack.follow_bans()
    rc, out = _admin(capsys, "--cluster", stack.cluster.config_path, "rotate-key", "--key", key, "--new-key", new_key,
                     "--login", login_file)
    assert rc == 0 and "rotated the key of device %s" % dev.id.hex() in out and "version 2" in out, out
    assert (login_file.stat().st_mode & 0o777, new_key.stat().st_mode & 0o777) == (0o600, 0o600)
    new = json.loads(login_file.read_text())
    assert new["password"] != old["password"] and new["password"] not in out
    lines, took = _follow_until(stack, c.disconnected.is_set)
    assert c.disconnected.is_set(), lines
    assert not Client(stack, dev.username, old).accepted
    again = Client(stack, dev.username, new)
    assert again.accepted
    again.close()
    rc, out = _admin(capsys, "--cluster", stack.cluster.config_path, "rotate-key", "--key", key, "--new-key",
                     tmp_path / "third.key", "--device-id", dev.id.hex())
    assert rc == 1 and "is not the key in" in out and not (tmp_path / "third.key").exists()   # the old key is spent


def test_a_node_that_hides_a_ban_from_its_block_is_not_believed(stack, register):
    from ledgerlink.ledger.state import encoding as enc
    from ledgerlink.tools.broker_access import AccessError, proven_block_txs

    [dev] = register(1)
    stack.follow_bans()
    tx = enc.ban_tx(stack.chain_id, stack.cluster.key("admin"), dev.id, "hidden ban", int(time.time() * 1000))
    height = stack.ledger.submit(tx)["height"]

    class Hiding:                                                 # its own answers drop the ban; other nodes honest
        config = stack.ledger.config

        def block(self, h):
            res = dict(stack.ledger.block(h))
            res["txs"] = [t for t in res["txs"] if t != tx]
            return res

        def request_to(self, i, op, **args):
            return self.block(args["height"]) if i == 0 else stack.ledger.request_to(i, op, **args)

    assert tx in proven_block_txs(Hiding(), stack.chain_id, stack.validators, height)
    Hiding.request_to = lambda self, i, op, **args: self.block(args["height"])      # every node hides it
    with pytest.raises(AccessError, match="in a form that checks"):
        proven_block_txs(Hiding(), stack.chain_id, stack.validators, height)
    lines, _ = _follow_until(stack, lambda: False, 0.3)
    assert any("%s disabled: banned" % dev.username in line for line in lines), lines
