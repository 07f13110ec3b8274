"""The update part of ``ledgerlink demo --scenario spinning`` (``demo_spinning.UPDATE_STEPS``).

On the running site: a maintenance key is registered; the site's update service (``admin_release``'s
``UpdateService`` under the ``ll-updates`` broker account, re-proving offers from the ledger) publishes
two releases recorded on the ledger as ``ledgerlink admin release`` records them. The carding machine's
controller (a CPython ``Device`` with ``ledgerlink.device.update``) takes a configuration update, checks
every proof, installs it atomically and checks in with its next reading's receipt. The lap former's
controller takes a new app library into its other slot; the new version fails its start check (it never
gets a reading through), so it does not check in before its deadline and is rolled back: the old version
runs again, the accepted sequence is not lowered and the service is told (``rolled-back``) and does not
offer it again. Each step is a check of the summary.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from ledgerlink.core import cbor
from ledgerlink.protocol import update_check as uc, update_manifest as um
from ledgerlink.protocol.codes import IMAGE_APP_LIBRARY, IMAGE_CONFIGURATION, ROLE_MAINTENANCE, ROLE_SENSOR

UPDATES_USER = "ll-updates"
TRIAL_DEADLINE_MS = 3000        # the demo's check-in deadline for a new version (a device's default: 5 min)
WAIT_S = 30.0
CARDER_CLASS = "carding-controller"
LAP_CLASS = "lap-controller"
CARDER_CONFIG = b'{"line": "spin-1", "doffer_rpm": 42, "sliver_hank": 0.12}'
LAP_APP = b"\xa0" + bytes(range(256)) * 6       # a new app library image (its content is not run here)

Check = tuple[str, bool, str]


def _wait(predicate: Callable[[], bool], timeout: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def release(site: Any, key: bytes, folder: Path, payload: bytes, component: int, device_class: str,
            sequence: int, version: str) -> bytes:
    """Record a signed manifest of ``payload`` on the ledger and write its offer (as ``admin release``); the
    offer, checked as a device of ``device_class`` checks it."""
    from ledgerlink.ledger.state import encoding as enc
    from ledgerlink.ledger.state.codes import RecordKind
    from ledgerlink.tools.admin_release import write_release
    from ledgerlink.tools.demo_spinning import CRYPTO

    stack = site.stack
    manifest = um.Manifest(sequence, component, device_class, hashlib.sha256(payload).digest(),
                           len(payload), 512, (), version)
    signer = enc.device_id(CRYPTO.public_key(key, True))
    signed = um.sign(manifest, key, signer, CRYPTO)
    digest = um.manifest_digest(manifest.encode())
    tx = enc.firmware_tx(stack.chain_id, key, digest, version, device_class, component, int(time.time() * 1000),
                         size=manifest.size, sequence=sequence)
    res = site.ledger.submit(tx)
    if res.get("status") != "committed" or res.get("code") != 0:
        raise uc.UpdateRefused(uc.UPDATE_NOT_ON_LEDGER, "release not recorded: %r" % (res,))
    proofs = [site.ledger.record(int(kind), rid)["proof"]
              for kind, rid in ((RecordKind.DEVICE, signer), (RecordKind.FIRMWARE, digest))]
    offer = uc.encode_offer(signed, cbor.dumps(proofs[0]), cbor.dumps(proofs[1]))
    uc.check_offer(offer, stack.chain_id, stack.validators, device_class, CRYPTO)
    write_release(folder, offer, payload)
    return offer


def _controller(site: Any, root: Path, name: str, device_class: str, **targets: Any) -> tuple[Any, Any]:
    """A registered CPython device with its updates attached (not started)."""
    from ledgerlink.device.client import Device
    from ledgerlink.device.update import attach

    stack = site.stack
    dev = Device.open(str(root / "dev"), stack.site, stack.broker_host, stack.broker_port, stack.chain_id,
                      stack.validators, ca_public=stack.public_key("gw-ca"),
                      gateway_keys={stack.gateway_id: stack.public_key("gateway")}, group_key=stack.group_key,
                      backoff_initial=0.2, backoff_max=2.0)
    request = dev.core.registration_request(int(time.time() * 1000), ROLE_SENSOR,
                                            {"name": name, "class": device_class}).payload
    stack.register([request])
    dev.set_login(stack.device_login(dev.core.device_id)["password"])
    updates = attach(dev, device_class, str(root / "upd"), trial_deadline_ms=TRIAL_DEADLINE_MS,
                     **{k: str(root / v) for k, v in targets.items()})
    return dev, updates


def update_step(site: Any) -> list[Check]:
    """The update checks of the spinning scenario (see the module docstring)."""
    from ledgerlink.ledger.state import encoding as enc
    from ledgerlink.tools.admin_release import UpdateService
    from ledgerlink.tools.demo_spinning import CRYPTO

    stack = site.stack
    checks: list[Check] = []
    root = Path(tempfile.mkdtemp(prefix="ll-spinning-updates-"))
    folder = stack.data_dir / "ledger" / "releases"         # beside cluster.json: the dashboard's /versions
    folder.mkdir(parents=True, exist_ok=True)
    maintenance = CRYPTO.generate_private_key()
    stack.register([enc.registration_request(maintenance, ROLE_MAINTENANCE, {"name": "spinning maintenance"},
                                             int(time.time() * 1000))], accounts=False)
    login = stack.access.add(UPDATES_USER, "updates")
    service = UpdateService(stack.broker_host, stack.broker_port, stack.site, folder, login["username"],
                            login["password"], client_id=UPDATES_USER, ledger=site.ledger)
    opened: list[tuple[Any, Any]] = []
    try:
        service.start()
        config_offer = release(site, maintenance, folder, CARDER_CONFIG, IMAGE_CONFIGURATION, CARDER_CLASS, 1,
                               "carder-cfg-1")
        app_offer = release(site, maintenance, folder, LAP_APP, IMAGE_APP_LIBRARY, LAP_CLASS, 2, "lap-app-2")
        checks.append(("two releases recorded and offered", True, "config %s, app %s (manifest digests)" % (
            um.Signed(cbor.loads(config_offer)[1]).digest.hex()[:16],
            um.Signed(cbor.loads(app_offer)[1]).digest.hex()[:16])))

        carder, carder_upd = _controller(site, root / "carder", "carding machine's controller", CARDER_CLASS,
                                         config_path="carder.json")
        opened.append((carder, carder_upd))
        (root / "carder" / "carder.json").write_bytes(b'{"line": "spin-1", "doffer_rpm": 40}')
        carder.start()
        got = _wait(lambda: (carder_upd.status().get(IMAGE_CONFIGURATION) or {}).get("sequence") == 1)
        installed = got and (root / "carder" / "carder.json").read_bytes() == CARDER_CONFIG
        checks.append(("carding controller installs the config update", installed,
                       "manifest, ledger record and signer proved, digest checked; old config kept as .old"
                       if installed else "not installed: %r" % (carder_upd.status(),)))
        carder.publish_reading({"doffer_rpm": 42})
        kept = _wait(lambda: carder_upd.status().get(IMAGE_CONFIGURATION, {}).get("trial") is False)
        checks.append(("carding controller checks in: config kept", kept and installed
                       and not (root / "carder" / "carder.json.old").exists(),
                       "its reading's receipt is the check-in; running %r" % (
                           carder_upd.status().get(IMAGE_CONFIGURATION, {}).get("version"),)))

        lap, lap_upd = _controller(site, root / "lap", "lap former's controller", LAP_CLASS, app_prefix="app")
        opened.append((lap, lap_upd))
        lap.start()
        trial = _wait(lambda: (lap_upd.status().get(IMAGE_APP_LIBRARY) or {}).get("trial") is True)
        slot_ok = (root / "lap" / "app.1").read_bytes() == LAP_APP if (root / "lap" / "app.1").exists() else False
        checks.append(("lap controller installs app 2 in slot 1, on trial", trial and slot_ok and lap_upd.restart_due,
                       "switched at its next start; must check in within %d s" % (TRIAL_DEADLINE_MS // 1000)))
        # the new app fails its start check: no reading goes out, so no receipt checks it in
        rolled = _wait(lambda: (lap_upd.status().get(IMAGE_APP_LIBRARY) or {}).get("trial") is False,
                       TRIAL_DEADLINE_MS / 1000 + WAIT_S)
        entry = lap_upd.status().get(IMAGE_APP_LIBRARY) or {}
        dev_hex = lap.core.device_id.hex()
        app = um.COMPONENT_NAMES[IMAGE_APP_LIBRARY]
        reported = _wait(lambda: service.versions().get(dev_hex, {}).get(app, {}).get("accepted") == 2
                         and service.versions()[dev_hex][app]["running"] == 0)
        back = rolled and entry.get("digest") is None and entry.get("sequence") == 2
        checks.append(("lap controller's app update fails its check and rolls back", back and reported,
                       "no check-in in %d s: the deployed app runs again, sequence 2 stays accepted (no "
                       "downgrade replay), the service is told rolled-back" % (TRIAL_DEADLINE_MS // 1000)
                       if back and reported else "status %r, service %r" % (entry, service.versions().get(dev_hex))))
    except Exception as exc:  # noqa: BLE001 - a step that breaks is a failed check, not a crashed demo
        checks.append(("updates", False, "%s: %s" % (type(exc).__name__, exc)))
    finally:
        for dev, upd in opened:
            upd.stop()
            dev.stop()
        service.stop()
        shutil.rmtree(root, ignore_errors=True)
    return checks
