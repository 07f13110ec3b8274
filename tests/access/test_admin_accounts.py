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
