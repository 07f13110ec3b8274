"""The dashboard's versions page: ``/versions`` shows what each device runs beside the latest release of its
class that the ledger records, each record's proof checked against the gateway's trusted validators (and the
group key where the chain has one).

What a device runs is the ledger's device-version record, written from the version statement the device
signed (docs/protocol.md, "Updates"), proved like the latest release. The list of devices and, for a device
whose statement the ledger does not hold, what it reported, come from the site's update service
(``versions.json`` in the release folder beside the cluster config, ``ledgerlink.tools.admin_release``),
shown as reported, not proved. Every value is escaped on the server (classes and versions are text a device
or a release chose).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ledgerlink.core import cbor
from ledgerlink.core.errors import LedgerlinkError
from ledgerlink.gateway import pages
from ledgerlink.gateway.pages import esc
from ledgerlink.protocol import spv
from ledgerlink.protocol.ledger_tx import RECORD_DEVICE_VERSION, RECORD_FIRMWARE_LATEST
from ledgerlink.protocol.update_manifest import COMPONENT_NAMES

VERSIONS_FILE = "versions.json"
DEVICES_MAX = 1000


def proved_record(dashboard: Any, kind: int, record_id: Any) -> tuple[dict | None, str]:
    """(the proved record or None, what the proof says): a record of the ledger with its record proof checked
    against the trusted validators; None also when the proof does not check."""
    core = dashboard.metrics.core
    try:
        proof = dashboard.ledger.record(kind, record_id)["proof"]
        header, key, value = spv.verify_record_proof(cbor.dumps(proof), core.chain_id, core.validator_keys,
                                                    group_key=core.group_key)
        if key != spv.state_key(kind, record_id):
            return None, "proof for another record"
        return (cbor.loads(value) if value is not None else None), "verified (header %d)" % header.height
    except (LedgerlinkError, KeyError, TypeError, OSError) as exc:
        return None, "not verified: %s" % exc


def _latest(dashboard: Any, component: int, device_class: str) -> tuple[dict | None, str]:
    return proved_record(dashboard, RECORD_FIRMWARE_LATEST, [component, device_class])


def _device_id(dev: str) -> bytes:
    try:
        return bytes.fromhex(dev)
    except ValueError:
        return b""


def versions_page(dashboard: Any, q: dict[str, str]) -> bytes:
    """The page: a row per device and component."""
    core = dashboard.metrics.core
    message = "running versions as the devices stated them to the ledger; both proved against the validators"
    try:
        folder = Path(dashboard.ledger.config.path).parent / "releases"
        reported = json.loads((folder / VERSIONS_FILE).read_text())
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        reported, message = {}, "no device versions yet (is the update service running?): %s" % exc
    cells = []
    latest: dict[tuple[int, str], tuple[dict | None, str]] = {}
    for dev in sorted(reported)[:DEVICES_MAX]:
        cls = str(reported[dev].get("class", ""))
        for component, name in sorted(COMPONENT_NAMES.items()):
            if (component, cls) not in latest:
                latest[(component, cls)] = _latest(dashboard, component, cls)
            record, proof = latest[(component, cls)]
            running = reported[dev].get("components", {}).get(name)
            stated, stated_proof = (None, "") if running is None else proved_record(
                dashboard, RECORD_DEVICE_VERSION, [_device_id(dev), component])
            if running is None and record is None:
                continue
            if stated is not None:
                seq = stated[1]
                runs = "as deployed" if not seq else "%s %s" % (seq, stated[3] or "")
                runs += " (on the ledger%s)" % (", on trial" if running and running.get("trial") else "")
                proof = "device version %s; latest release %s" % (stated_proof, proof)
            else:
                seq = running.get("running", 0) if running else 0
                runs = "as deployed" if not seq else "%s %s%s" % (seq, running.get("version") or "",
                                                                " (on trial)" if running.get("trial") else "")
                if running is not None:
                    runs += " (reported, not on the ledger)"
            if record is None or 4 not in record:
                state, newest = "no release", ""
            else:
                newest = "%s %s" % (record[4], record[2])
                state = "up to date" if seq >= record[4] else "behind"
            cells.append([pages.device_cell(dev), esc(cls), esc(name), esc(runs), esc(newest), esc(state), esc(proof)])
    head = "".join("<th>%s</th>" % h for h in ("device", "class", "component", "runs", "latest release",
                                               "state", "ledger proof"))
    table = '<table id="versions"><thead><tr>%s</tr></thead>%s</table>' % (
        head, pages.rows("versions-rows", cells, "no device has reported its versions", 7))
    content = '<p class="sub" id="versions-status">%s</p>' % esc(message) + table
    return pages.page("versions", "versions", core.site, core.gateway_name,
                      "<section><h2>device versions</h2>" + content + "</section>")
