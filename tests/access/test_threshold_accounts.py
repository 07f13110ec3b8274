"""Broker accounts follow the ledger of a site with threshold headers: the blocks and device records that
``Stack.follow_bans`` reads are checked with the set's FROST group key (their headers name the set with it),
so a ban committed by any admin disables the account there too."""

import time

import pytest

from ledgerlink.ledger.state import encoding as enc
from ledgerlink.tools.stack import Stack
from tests.access.conftest import SITE, Client, Dev, registrar


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("access-threshold"), site=SITE, broker="embedded",
              batch={"max": 256, "interval_ms": 50}, threshold=True)
    try:
        s.start()
        yield s
    finally:
        s.stop()


def test_a_ban_by_any_admin_disables_the_account_on_a_threshold_ledger(stack):
    assert stack.group_key is not None
    [dev] = registrar(stack, Dev)(1)
    c = dev.client()
    stack.follow_bans()                                           # caught up before the ban
    tx = enc.ban_tx(stack.chain_id, stack.cluster.key("admin"), dev.id, "banned elsewhere", int(time.time() * 1000))
    assert stack.ledger.submit(tx).get("status") == "committed"   # not through Stack.ban: as another admin would
    lines: list[str] = []
    deadline = time.monotonic() + 5
    while not c.disconnected.is_set() and time.monotonic() < deadline:
        lines += stack.follow_bans()
        time.sleep(0.25)
    assert not any(line.startswith("following bans:") for line in lines), lines
    assert c.disconnected.is_set(), lines
    assert any("%s disabled: banned" % dev.username in line for line in lines), lines
    assert not Client(stack, dev.username, dev.login()).accepted
