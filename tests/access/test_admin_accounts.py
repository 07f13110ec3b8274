"""``ledgerlink admin`` keeps the broker accounts of a site: broker-login makes or rotates a device's,
register makes it, ban disables it (the device's connection ends) and unban enables it again."""

from __future__ import annotations

import json
import time

from ledgerlink.tools import admin
from tests.access.conftest import Client, Dev


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
