"""The update part of the spinning scenario on a running site: a config update installed and checked in,
an app update that does not check in rolled back, each a check that held (tools/demo_updates.py)."""

from __future__ import annotations

import pytest

from ledgerlink.tools import demo_spinning
from ledgerlink.tools.demo_updates import update_step
from ledgerlink.tools.stack import Stack


@pytest.mark.slow
def test_spinning_update_steps(tmp_path):
    stack = Stack(tmp_path / "site", site="spinupd", broker="embedded", batch={"max": 64, "interval_ms": 50},
                  progress=lambda line: None)
    site = None
    try:
        stack.start()
        site = demo_spinning.SpinningSite(stack)
        checks = update_step(site)
    finally:
        if site is not None:
            site.close()
        stack.stop()
    assert [c for c in checks if not c[1]] == []
    assert [c[0] for c in checks] == [
        "two releases recorded and offered", "carding controller installs the config update",
        "carding controller checks in: config kept", "lap controller installs app 2 in slot 1, on trial",
        "lap controller's app update fails its check and rolls back"]
    assert (tmp_path / "site" / "ledger" / "releases" / "versions.json").exists()
