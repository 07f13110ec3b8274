"""``ledgerlink admin release``: sign an update manifest with a maintenance key, record it, and publish it.

``ledgerlink admin release --component C --class K --seq N FILE --maintenance-key KEY`` makes the manifest
of FILE (docs/protocol.md, "Updates"), signs it (COSE_Sign1 by the maintenance key), records its digest on
the ledger (a firmware record with the sequence, refused by the ledger unless N is above the class and
component's latest), then takes the two record proofs a device needs from the ledger, checks the whole
offer as a device of class K would (``update_check``), and writes ``DIGEST.offer`` and ``DIGEST.payload``
into the release folder (``--out``, default ``releases/`` beside the cluster config), where the
gateway's update publisher (``load_releases``) serves them.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Any

from ledgerlink.core.errors import LedgerlinkError
from ledgerlink.ledger.state import encoding as enc
from ledgerlink.ledger.state.codes import RecordKind
from ledgerlink.protocol import update_check, update_manifest as um
from ledgerlink.protocol.update_transport import Release

COMPONENTS = {name: code for code, name in um.COMPONENT_NAMES.items()}
DEFAULT_CHUNK = 1024
OFFER_SUFFIX = ".offer"
PAYLOAD_SUFFIX = ".payload"


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
        update_check.check_offer(offer, ctx.chain_id, ctx.validators, manifest.device_class, ctx.crypto)
    except update_check.UpdateRefused as exc:
        raise AdminError("a device would refuse this release: %s" % exc) from None
    folder = Path(args.out) if args.out else ctx.cluster_path.parent / "releases"
    path = write_release(folder, offer, payload)
    print("offer checked as a device of class %r checks it; published as %s" % (manifest.device_class, path))
    return EXIT_OK
