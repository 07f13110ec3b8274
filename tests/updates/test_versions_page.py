"""The dashboard's /versions page: each device's reported version beside the latest release the ledger
records, proved against the trusted validators; a lying node's proof is shown as not verified; text
from devices and releases is escaped."""

from __future__ import annotations

import json
from types import SimpleNamespace

from ledgerlink.core import cbor
from ledgerlink.gateway.dashboard import Dashboard
from ledgerlink.protocol.codes import IMAGE_CONFIGURATION
from tests.updates.site import DEVICE_CLASS, ReleaseSite


def _dashboard(site: ReleaseSite, tmp_path, lie: bool = False):
    def record(kind, rid):
        proof = site.proof(kind, rid)
        if lie and proof[3] is not None:
            proof[3] = cbor.dumps({**cbor.loads(proof[3]), 4: 1})              # claims an older latest release
        return {"proof": proof}

    core = SimpleNamespace(chain_id=site.chain_id, validator_keys=site.keys, group_key=None, site="plant",
                           gateway_name="gw")
    ledger = SimpleNamespace(record=record, config=SimpleNamespace(path=tmp_path / "cluster.json"))
    return SimpleNamespace(metrics=SimpleNamespace(core=core), ledger=ledger)


def test_versions_page(tmp_path):
    site = ReleaseSite()
    site.release(b"{}", IMAGE_CONFIGURATION, 1, version="<i>c-1</i>")
    site.release(b"{ }", IMAGE_CONFIGURATION, 2, version="c-2")
    (tmp_path / "releases").mkdir()
    reported = {
        "aa" * 16: {"class": DEVICE_CLASS, "components": {"config": {"running": 2, "version": "c-2", "trial": False}}},
        "bb" * 16: {"class": DEVICE_CLASS, "components": {"config": {"running": 1, "version": "<i>c-1</i>",
                                                                     "trial": True}}},
        "cc" * 16: {"class": "<script>x</script>", "components": {}},
    }
    (tmp_path / "releases" / "versions.json").write_text(json.dumps(reported))
    status, _, body = Dashboard._answer(_dashboard(site, tmp_path), "/versions", {})
    html = body.decode()
    assert status == 200 and "<script>x" not in html and "&lt;i&gt;c-1" in html
    rows = html.split("<tr>")
    assert any("aa" * 8 in r and "up to date" in r and "verified (header" in r for r in rows)
    assert any("bb" * 8 in r and "behind" in r and "(on trial)" in r for r in rows)
    status, _, body = Dashboard._answer(_dashboard(site, tmp_path, lie=True), "/versions", {})
    assert "not verified" in body.decode() and "up to date" not in body.decode()


def test_versions_page_without_a_service(tmp_path):
    status, _, body = Dashboard._answer(_dashboard(ReleaseSite(), tmp_path), "/versions", {})
    assert status == 200 and "no device versions yet" in body.decode()


def test_every_page_links_to_versions(tmp_path):
    """The dashboard's navigation names the versions page, so an operator finds it from any page."""
    status, _, body = Dashboard._answer(_dashboard(ReleaseSite(), tmp_path), "/versions", {})
    nav = body.decode().split("<nav>")[1].split("</nav>")[0]
    assert status == 200 and '<a href="/versions">versions</a>' in nav
