"""``ledgerlink admin release``: sign an update manifest with a maintenance key, record it, and publish it.

``ledgerlink admin release --component C --class K --seq N FILE --maintenance-key KEY`` makes the manifest
of FILE (docs/protocol.md, "Updates"), signs it (COSE_Sign1 by the maintenance key), records its digest on
the ledger (a firmware record with the sequence, refused by the ledger unless N is above the class and
component's latest), then takes the two record proofs a device needs from the ledger, checks the whole
offer as a device of class K would (``update_check``), and writes ``DIGEST.offer`` and ``DIGEST.payload``
into the release folder (``--out``, default ``releases/`` beside the cluster config), where the
update service serves them.

``UpdateService`` is that service: an ``UpdatePublisher`` over MQTT 5 (paho), logged in with an account of
role ``updates`` (it may send on every device's ``fw`` topic and read every ``upd`` topic, nothing else),
serving the releases of a release folder, read again when it changes. It keeps each device's last status
(``statuses``: the versions it runs), which ``versions`` sets beside the latest release of its class.
It writes them to ``versions.json`` in the release folder, which ``ledgerlink admin versions`` sets
beside the latest release the ledger records (proved) for each device's class and component.
Given the ledger (``--cluster``), it sends each offer with record proofs taken from the ledger at most
``FRESH_S`` before and checked as a device checks them, so a release whose maintenance key was banned
since is no longer offered. ``python3 -m ledgerlink.tools.admin_release serve --port P --site S --releases
DIR [--cluster C.json]`` runs one.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import time
from pathlib import Path
from typing import Any

from ledgerlink.core.errors import LedgerlinkError
from ledgerlink.ledger.state import encoding as enc
from ledgerlink.ledger.state.codes import RecordKind
from ledgerlink.protocol import update_check, update_manifest as um
from ledgerlink.protocol import update_transport as ut
from ledgerlink.protocol.update_publisher import Release

log = logging.getLogger(__name__)
COMPONENTS = {name: code for code, name in um.COMPONENT_NAMES.items()}
DEFAULT_CHUNK = 1024
VERSIONS_FILE = "versions.json"
FRESH_S = 10.0                  # an offer's proofs taken from the ledger are used this long
OFFER_SUFFIX = ".offer"
PAYLOAD_SUFFIX = ".payload"
UPDATES_USER = "ll-updates"     # the site's update service's broker account (role updates)
SERVICE_READY = "update service of site"     # logged once it subscribed
RELAYED_KEPT = 64               # the last relayed version statements and the ledger's answers, kept to inspect


def add_parser(with_ledger: Any) -> None:
    """The ``release`` subcommand, on ``ledgerlink admin``'s parser (``with_ledger`` adds the ledger options)."""
    r = with_ledger("release", help="sign, record and publish an update (maintenance key)")
    r.add_argument("payload", metavar="FILE", help="the payload: a config file, an app library (.mpy set or "
                   "ROMFS image) or a firmware image")
    r.add_argument("--component", required=True, choices=sorted(COMPONENTS), help="what the payload is")
    r.add_argument("--class", dest="device_class", required=True, metavar="CLASS", help="device class it is for")
    r.add_argument("--seq", type=int, required=True, metavar="N", help="sequence number: above the class and "
                   "component's latest release")
    r.add_argument("--maintenance-key", required=True, metavar="FILE", help="private key of a maintenance device")
    r.add_argument("--version", help="a name for people (default: the sequence number)")
    r.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK, metavar="B",
                   help="bytes per MQTT chunk (%d..%d, default %d)" % (um.CHUNK_SIZE_MIN, um.CHUNK_SIZE_MAX,
                                                                      DEFAULT_CHUNK))
    r.add_argument("--depends", action="append", default=[], metavar="DIGEST",
                   help="manifest digest (hex) of a release that must be installed first (repeatable)")
    r.add_argument("--out", metavar="DIR", help="release folder the publisher serves (default: releases/ beside "
                   "the cluster config)")


def _manifest(args: argparse.Namespace, payload: bytes, usage: Any) -> um.Manifest:
    try:
        deps = tuple(bytes.fromhex(d) for d in args.depends)
    except ValueError:
        raise usage("--depends takes a manifest digest in hex") from None
    try:
        return um.Manifest(args.seq, COMPONENTS[args.component], args.device_class, hashlib.sha256(payload).digest(),
                           len(payload), args.chunk_size, deps, args.version)
    except LedgerlinkError as exc:
        raise usage(str(exc)) from None


def add_versions_parser(with_ledger: Any) -> None:
    """The ``versions`` subcommand: what each device runs (its statement on the ledger, proved; else what the
    update service heard) beside the latest release on the ledger."""
    v = with_ledger("versions", help="each device's running versions beside the latest release on the ledger")
    v.add_argument("--releases", metavar="DIR", help="the release folder the update service serves and writes "
                   "versions.json into (default: releases/ beside the cluster config)")


def cmd_versions(ctx: Any, args: argparse.Namespace) -> int:
    import json

    from ledgerlink.tools.admin import EXIT_OK, NoCertifiedBlock, _usage

    folder = Path(args.releases) if args.releases else ctx.cluster_path.parent / "releases"
    try:
        reported = json.loads((folder / VERSIONS_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise _usage("no device versions in %s (is the update service running?): %s" % (folder, exc)) from None
    latest: dict[tuple[int, str], Any] = {}
    line = None
    for dev in sorted(reported):
        cls = reported[dev]["class"]
        print("device %s class %r" % (dev, cls))
        for name, code in sorted(COMPONENTS.items(), key=lambda kv: kv[1]):
            if (code, cls) not in latest:
                try:
                    record, header, votes = ctx.proven_record(RecordKind.FIRMWARE_LATEST, [code, cls])
                except NoCertifiedBlock:
                    record, header, votes = None, None, 0
                latest[(code, cls)] = record
                if header is not None:
                    line = ctx.proof_line(header, votes)
            record = latest[(code, cls)]
            running = reported[dev]["components"].get(name)
            try:
                stated, header, votes = ctx.proven_record(RecordKind.DEVICE_VERSION, [bytes.fromhex(dev), code])
            except (NoCertifiedBlock, ValueError):
                stated = None
            if record is None and running is None and stated is None:
                continue
            if stated is not None:
                seq = stated[1]
                runs = ("runs %d%s" % (seq, " (%s)" % stated[3] if stated[3] else "") if seq else "runs as deployed")
                source = " [stated by the device on the ledger, %s]" % ctx.proof_line(header, votes)
            else:
                seq = running["running"] if running else 0
                runs = "runs %d%s%s" % (seq, " (%s)" % running["version"] if running["version"] else "",
                                        ", on trial" if running["trial"] else "") if seq else "runs as deployed"
                source = " [reported to the update service, not on the ledger]"
            if record is None or 4 not in record:
                state = "no release on the ledger"
            else:
                state = "latest %d (%s) on the ledger: %s" % (record[4], record[2],
                                                             "up to date" if seq >= record[4] else "BEHIND")
            if running and running["accepted"] > running["running"]:
                runs += " (release %d rolled back)" % running["accepted"]
            print("  %-11s %s; %s%s" % (name, runs, state, source))
    if line:
        print("latest releases: " + line)
    return EXIT_OK


def write_release(folder: Path, offer: bytes, payload: bytes) -> Path:
    """Write a release (offer and payload, each to a temporary file, then renamed); the offer's path."""
    release = Release(offer, payload)
    folder.mkdir(parents=True, exist_ok=True)
    stem = release.digest.hex()
    for suffix, data in ((PAYLOAD_SUFFIX, payload), (OFFER_SUFFIX, offer)):
        tmp = folder / (stem + suffix + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(folder / (stem + suffix))
    return folder / (stem + OFFER_SUFFIX)


def load_releases(folder: Path) -> list[Release]:
    """The releases in a release folder (an offer without its payload, or a damaged one, is skipped)."""
    out = []
    for offer_path in sorted(Path(folder).glob("*" + OFFER_SUFFIX)):
        payload_path = offer_path.with_suffix(PAYLOAD_SUFFIX)
        try:
            release = Release(offer_path.read_bytes(), payload_path.read_bytes())
        except (OSError, LedgerlinkError, TypeError, KeyError, IndexError):
            continue
        if hashlib.sha256(release.payload).digest() == release.manifest.digest:
            out.append(release)
    return out


def cmd_release(ctx: Any, args: argparse.Namespace) -> int:
    from ledgerlink.tools.admin import EXIT_OK, AdminError, _usage, load_key, now_ms

    try:
        payload = Path(args.payload).read_bytes()
    except OSError as exc:
        raise _usage("cannot read %s: %s" % (args.payload, exc.strerror or exc)) from None
    manifest = _manifest(args, payload, _usage)
    key = load_key(args.maintenance_key, "maintenance key")
    signer = enc.device_id(ctx.crypto.public_key(key, True))
    signed = um.sign(manifest, key, signer, ctx.crypto)
    digest = um.manifest_digest(manifest.encode())
    tx = enc.firmware_tx(ctx.chain_id, key, digest, manifest.version or str(manifest.sequence), manifest.device_class,
                         manifest.component, now_ms(), size=manifest.size, sequence=manifest.sequence)
    res, line = ctx.submit(tx, "release record")
    print("%s release %d for class %r: manifest %s (%d bytes in %d chunks) recorded at height %d" % (
        args.component, manifest.sequence, manifest.device_class, digest.hex(), manifest.size, manifest.chunks,
        res["height"]))
    print(line)
    proofs = []
    for kind, record_id in ((RecordKind.DEVICE, signer), (RecordKind.FIRMWARE, digest)):
        answer = ctx.call("record", int(kind), record_id)
        if not answer.get("ok"):
            raise AdminError("ledger error: %s" % answer.get("error"))
        proofs.append(answer["proof"])
    offer = update_check.encode_offer(signed, proofs[0], proofs[1])
    try:
        update_check.check_offer(offer, ctx.chain_id, ctx.validators, manifest.device_class, ctx.crypto,
                                 group_key=ctx.group_key)
    except update_check.UpdateRefused as exc:
        raise AdminError("a device would refuse this release: %s" % exc) from None
    folder = Path(args.out) if args.out else ctx.cluster_path.parent / "releases"
    path = write_release(folder, offer, payload)
    print("offer checked as a device of class %r checks it; published as %s" % (manifest.device_class, path))
    return EXIT_OK


class UpdateService:
    """The update publisher of a site over MQTT; ``start``/``stop``. Its state is on paho's thread."""

    def __init__(self, host: str, port: int, site: str, releases: Path, username: str | None = None,
                 password: str | None = None, client_id: str = UPDATES_USER, ledger: Any = None,
                 relay_key: bytes | None = None, clock_ms: Any = None) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.site = site
        self.folder = Path(releases)
        self.ledger = ledger
        self.relay_key = relay_key
        self.clock_ms = clock_ms or (lambda: int(time.time() * 1000))     # the relayed transactions' time
        self.relayed: list[tuple[bytes, dict]] = []     # (statement, the ledger's answer), newest last
        import threading

        self._relay_due = threading.Event()
        self._statements_lock = threading.Lock()      # the publisher's statements: paho's thread and the relay's
        self._relay_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._fresh: dict[bytes, tuple[float, bytes | None]] = {}
        self.publisher = ut.UpdatePublisher(self.fresh_offer if ledger is not None else None)
        self._stamp: tuple = ()
        self._prefix = "ll/%s/dev/" % site
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if password is not None:
            self._client.username_pw_set(username or client_id, password)
        self._client.on_connect = self._connected
        self._client.on_message = self._message
        self._host, self._port = host, port

    def _connected(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            log.warning("broker refused the update service: %s", reason_code)
            return
        client.subscribe(self._prefix + "+/" + ut.UP_LEAF, 1)
        log.info("%s %s: subscribed to %s+/%s, releases in %s", SERVICE_READY, self.site, self._prefix, ut.UP_LEAF,
                 self.folder)

    def fresh_offer(self, release: Release) -> bytes | None:
        """The release's offer with record proofs taken from the ledger now (kept ``FRESH_S``), checked as a
        device checks it; None (not offered) when a device would refuse it, e.g. its maintenance key banned
        since the release. The ledger's answers are checked against the cluster's validators."""
        now = time.monotonic()
        kept = self._fresh.get(release.digest)
        if kept is not None and now - kept[0] < FRESH_S:
            return kept[1]
        from ledgerlink.core import cbor

        offer: bytes | None
        try:
            signed = cbor.loads(release.offer)[1]
            signer = um.Signed(signed).signer
            proofs = [self.ledger.record(int(kind), rid)["proof"]
                      for kind, rid in ((RecordKind.DEVICE, signer), (RecordKind.FIRMWARE, release.digest))]
            offer = update_check.encode_offer(signed, proofs[0], proofs[1])
            config = self.ledger.config
            group = config.genesis.get("group_key")
            update_check.check_offer(offer, config.chain_id, list(config.validators), release.manifest.device_class,
                                     group_key=bytes.fromhex(group) if group else None)
        except (update_check.UpdateRefused, LedgerlinkError, KeyError, TypeError, OSError) as exc:
            log.warning("release %s not offered: %s", release.digest.hex(), exc)
            offer = None
        self._fresh[release.digest] = (now, offer)
        return offer

    def reload(self) -> None:
        """Take the release folder again when a file in it changed."""
        try:
            stamp = tuple(sorted((p.name, p.stat().st_mtime_ns) for p in self.folder.iterdir()))
        except OSError:
            stamp = ()
        if stamp != self._stamp:
            self._stamp = stamp
            self.publisher.releases = {}
            for release in load_releases(self.folder):
                self.publisher.add(release)

    def _message(self, client: Any, userdata: Any, msg: Any) -> None:
        parts = msg.topic[len(self._prefix):].split("/")
        if len(parts) != 2 or not msg.topic.startswith(self._prefix):
            return
        try:
            device = bytes.fromhex(parts[0])
        except ValueError:
            return
        self.reload()
        before = self.publisher.status_of(device)
        with self._statements_lock:
            answers = self.publisher.handle(device, msg.payload)
        for answer in answers:
            client.publish(self._prefix + parts[0] + "/" + ut.DOWN_LEAF, answer, qos=1)
        if self.publisher.status_of(device) is not before:
            self.write_versions()
        if self.publisher.statements:
            self._relay_due.set()

    def relay(self) -> list[dict]:
        """Submit the version statements the devices sent as device-version transactions signed by the relay
        key (the ledger checks each statement itself); the ledger's answers. Without a ledger or a relay key
        the statements are dropped. Called from one thread at a time (the relay thread, or a test)."""
        from ledgerlink.protocol.ledger_tx import device_version_tx, reason_name

        with self._statements_lock:
            pending = self.publisher.take_statements()
        answers: list[dict] = []
        if self.ledger is None or self.relay_key is None:
            return answers
        for device, statement in pending:
            tx = device_version_tx(self.ledger.config.chain_id, self.relay_key, statement, self.clock_ms())
            try:
                res = self.ledger.submit(tx)
            except (LedgerlinkError, OSError, TimeoutError) as exc:
                res = {"ok": False, "error": str(exc)}
            if res.get("status") != "committed" or res.get("code"):
                log.warning("version statement of %s not recorded: %s", device.hex(),
                            reason_name(int(res["code"])) if res.get("code") else res.get("error") or res)
            answers.append(res)
            self.relayed = (self.relayed + [(statement, res)])[-RELAYED_KEPT:]
        return answers

    def _relay_loop(self) -> None:
        while not self._stopping.is_set():
            if self._relay_due.wait(1.0):
                self._relay_due.clear()
                self.relay()

    def write_versions(self) -> None:
        """``versions.json`` in the release folder: {device id hex: {"class", "components": versions}}."""
        import json

        out = {dev.hex(): {"class": status[1], "components": self.versions().get(dev.hex(), {})}
               for dev, status in list(self.publisher.statuses.items())}
        tmp = self.folder / (VERSIONS_FILE + ".tmp")
        tmp.write_text(json.dumps(out, sort_keys=True))
        tmp.replace(self.folder / VERSIONS_FILE)

    def versions(self) -> dict[str, dict]:
        """{device id hex: {component name: {"running": seq (0: as deployed), "version", "trial", "accepted": the
        sequence it accepted last (above "running" after a rollback), "latest": seq of the newest release}}}."""
        out: dict[str, dict] = {}
        for device, status in list(self.publisher.statuses.items()):
            row = {}
            for component, name in um.COMPONENT_NAMES.items():
                running = status[2].get(component)
                latest = self.publisher.latest(status[1], component)
                if running is None and latest is None:
                    continue
                runs = running is not None and running[1] is not None     # null digest: as deployed (or rolled back)
                row[name] = {"running": running[0] if runs else 0, "version": running[2] if runs else None,
                             "trial": bool(running[3]) if runs else False, "accepted": running[0] if running else 0,
                             "latest": latest.manifest.sequence if latest else None}
            out[device.hex()] = row
        return out

    def start(self) -> None:
        import threading

        self.reload()
        if self.ledger is not None and self.relay_key is not None:
            self._relay_thread = threading.Thread(target=self._relay_loop, name="ll-version-relay", daemon=True)
            self._relay_thread.start()
        self._client.connect(self._host, self._port, keepalive=30)
        self._client.loop_start()

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
        self._stopping.set()
        if self._relay_thread is not None:
            self._relay_thread.join(timeout=15)


def main(argv: list[str] | None = None) -> int:
    import os
    import signal
    import threading

    p = argparse.ArgumentParser(prog="python3 -m ledgerlink.tools.admin_release",
                                description="serve a site's update releases over MQTT")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve the releases of a folder to the site's devices")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--site", required=True)
    s.add_argument("--releases", metavar="DIR", help="release folder (default with --data-dir: DATA/ledger/releases)")
    s.add_argument("--data-dir", metavar="DATA", help="a site's data directory (ledgerlink up): the account "
                   "%s (made when missing), the release folder and the cluster config from there" % UPDATES_USER)
    s.add_argument("--cluster", metavar="FILE", help="cluster config: offers get record proofs from the ledger "
                   "at most %d s old, and a release a device would refuse (its key banned) is not offered" % FRESH_S)
    s.add_argument("--relay-key", metavar="FILE", help="with --cluster: the private key (any registered, not "
                   "banned device) that submits the devices' version statements to the ledger")
    s.add_argument("--username", default=UPDATES_USER, help="broker account of role updates")
    s.add_argument("--password-env", default="LL_UPDATES_PASSWORD", metavar="VAR",
                   help="environment variable holding the account's password")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    password = os.environ.get(args.password_env)
    releases, cluster = args.releases, args.cluster
    if args.data_dir:
        from ledgerlink.tools.broker_access import SiteAccess

        data = Path(args.data_dir)
        login = SiteAccess(data / "broker", args.site).add(args.username, "updates")
        password = login["password"]
        releases = releases or str(data / "ledger" / "releases")
        cluster = cluster or str(data / "ledger" / "cluster.json")
    if not releases:
        p.error("give --releases or --data-dir")
    Path(releases).mkdir(parents=True, exist_ok=True)
    ledger = None
    if cluster:
        from ledgerlink.ledger.client import LedgerClient

        ledger = LedgerClient(cluster)
    relay_key = None
    if args.relay_key:
        from ledgerlink.tools.admin import load_key

        relay_key = load_key(args.relay_key, "relay key")
    service = UpdateService(args.host, args.port, args.site, Path(releases), args.username, password,
                            args.username, ledger, relay_key)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    service.start()
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    service.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
