"""``ledgerlink admin set-dkg``, ``approve-set``, ``set-change`` and ``follow-set``: change the validator set
through the ledger.

A validator set change names the new set, the height H from which it signs blocks, and approvals of
2f+1 validators of the current set (``ledger_tx.validator_set_change_tx``). Each validator's operator
signs an approval with ``approve-set`` (or ``set-change --approve-key`` signs with key files held
where it runs); ``set-change`` collects them, submits the change with the admin key and shows the
recorded change. ``--add-address`` names where an added validator listens in the peers file of the
nodes where it runs (they link to it at the switch; a site whose nodes run elsewhere copies the entry
into each node's peers file). The current set and epoch are not taken on trust: starting from the cluster
config's validators, each change is followed with its proof (``validator_set.follow_set_change``).

On a ledger with threshold headers the new set gets its own FROST group key first: ``set-dkg`` runs the
dealerless DKG (t = 2f+1 of the new set) among the new set's key holders in one process, each
participant's state kept apart as the genesis ceremony does, writes each signing share (mode 0600,
never printed) beside that validator's key file as ``<name>.epoch<E>.share`` (``reconfig.share_path``;
the node loads it at the switch) and the group key and verifying shares to a public file that
``approve-set`` and ``set-change`` take with ``--dkg``: the approvals sign the set hash, which covers
the group key, and the change carries both. ``set-change`` refuses to drop a current group key unless
told ``--no-threshold``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from ledgerlink.core import frost
from ledgerlink.core.errors import LedgerlinkError
from ledgerlink.ledger.consensus.reconfig import share_path
from ledgerlink.ledger.transport import default_peers_file, write_peer_address
from ledgerlink.protocol import ledger_tx, validator_set
from ledgerlink.protocol.validator_set import TrustedSet

MAX_EPOCHS = 1 << 16


def add_parser(with_ledger: Any) -> None:
    """The subcommands, on ``ledgerlink admin``'s parser (``with_ledger`` adds the ledger options)."""
    d = with_ledger("set-dkg", help="run the new set's FROST DKG among its key holders; shares beside their keys")
    _set_arguments(d)
    d.add_argument("--holder-key", action="append", default=[], required=True, metavar="FILE",
                   help="the key file of a validator of the new set (one for each; its share goes beside it)")
    d.add_argument("--out", required=True, metavar="FILE", help="public DKG result to write (JSON)")
    a = with_ledger("approve-set", help="as a validator: sign an approval of a new validator set")
    a.add_argument("--key", required=True, metavar="FILE", help="this validator's private key file")
    _set_arguments(a)
    a.add_argument("--out", required=True, metavar="FILE", help="approval file to write (JSON)")
    a.add_argument("--dkg", metavar="FILE", help="the new set's DKG result (set-dkg): approve its group key too")
    s = with_ledger("set-change", help="submit a validator set change approved by 2f+1 of the current set")
    _set_arguments(s)
    s.add_argument("--approval", action="append", default=[], metavar="FILE",
                   help="an approval file made with approve-set (repeatable)")
    s.add_argument("--approve-key", action="append", default=[], metavar="FILE",
                   help="a validator key file held here: approve with it (repeatable)")
    s.add_argument("--dkg", metavar="FILE", help="the new set's DKG result (set-dkg): the change carries its group key")
    s.add_argument("--no-threshold", action="store_true",
                   help="the new set has no group key although the current one has (threshold headers stop)")
    with_ledger("follow-set", help="follow the validator set changes from the cluster config's set, with proofs")


def _set_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--replace", action="append", default=[], metavar="I=PUBKEY",
                   help="validator I gets a new key (hex; repeatable)")
    p.add_argument("--add", action="append", default=[], metavar="PUBKEY", help="a new validator at the end (hex)")
    p.add_argument("--add-address", action="append", default=[], metavar="HOST:PEER_PORT:CLIENT_PORT",
                   help="where the new validator of the --add at the same place listens: written to the peers file "
                        "of the nodes here (repeatable, one per --add)")
    p.add_argument("--peers", metavar="FILE", help="the nodes' peers file (default: peers.json beside the cluster config)")
    p.add_argument("--remove-last", type=int, default=0, metavar="K", help="remove the last K validators")
    p.add_argument("--height", type=int, required=True, metavar="H",
                   help="effective height: the first block the new set signs (above the block that records it)")


def follow(ctx: Any) -> TrustedSet:
    """The set in force: the cluster config's, moved along each recorded change with its proof."""
    from ledgerlink.tools.admin import AdminError

    trusted = TrustedSet(ctx.chain_id, ctx.validators, group_key=ctx.group_key)
    for _ in range(MAX_EPOCHS):
        answer = _ask(ctx, "set_change", epoch=trusted.epoch + 1)
        if answer is None:
            break
        try:
            trusted = validator_set.follow_set_change_proof(trusted, answer["proof"], ctx.crypto)
        except (LedgerlinkError, KeyError, TypeError) as exc:
            raise AdminError("validator set change %d does NOT verify: %s" % (trusted.epoch + 1, exc)) from None
    ctx.validators = trusted.keys
    ctx.group_key = trusted.group_key
    return trusted


def _ask(ctx: Any, op: str, **args: Any) -> dict | None:
    """The first good answer of any node to ``op``, or None when each answers it has none."""
    from ledgerlink.tools.admin import EXIT_UNAVAILABLE, AdminError

    answered = False
    for i in range(ctx.config.n):
        try:
            res = ctx.client.request_to(i, op, **args)
        except Exception:  # noqa: BLE001 - a node that is down or slow: ask the next
            continue
        answered = True
        if res.get("ok"):
            return res
    if not answered:
        raise AdminError("no ledger node answered %s" % op, EXIT_UNAVAILABLE)
    return None


def new_keys(current: list[bytes], args: argparse.Namespace) -> list[bytes]:
    from ledgerlink.tools.admin import _usage

    keys = list(current)
    try:
        for item in args.replace:
            index, _, key = item.partition("=")
            if not 0 <= int(index) < len(keys):
                raise _usage("--replace %s: no validator %s" % (item, index))
            keys[int(index)] = ledger_tx.compress_pubkey(bytes.fromhex(key))
        keys += [ledger_tx.compress_pubkey(bytes.fromhex(k)) for k in args.add]
    except (ValueError, LedgerlinkError) as exc:
        raise _usage("a validator key must be a P-256 public key in hex: %s" % exc) from None
    if args.remove_last:
        keys = keys[:-args.remove_last]
    return keys


def run_dkg(chain_id: str, epoch: int, keys: list[bytes], holders: dict[int, str]) -> tuple[bytes, list[bytes]]:
    """The new set's FROST DKG (t = 2f+1 of ``keys``), each signing share written beside its holder's key
    file (``share_path``); (group key, verifying shares by validator index)."""
    from ledgerlink.ledger.cluster import dkg_in_process, write_share

    context = ("%s/epoch-%d" % (chain_id, epoch)).encode()
    shares, verifying, group_key = dkg_in_process(len(keys), validator_set.spv.quorum(len(keys)), os.urandom, context)
    for i, share in enumerate(shares):
        if frost.verifying_share(share) != verifying[i]:
            raise ValueError("share %d does not match its verifying share" % i)
        write_share(share_path(holders[i], epoch), share)
    return group_key, list(verifying)


def _holders(ctx: Any, keys: list[bytes], files: list[str]) -> dict[int, str]:
    """Validator index in the new set -> key file, one for each key of ``keys``."""
    from ledgerlink.tools.admin import _usage, load_key

    short = [ledger_tx.compress_pubkey(k) for k in keys]
    out: dict[int, str] = {}
    for path in files:
        mine = ledger_tx.compress_pubkey(ctx.crypto.public_key(load_key(path, "validator key"), True))
        if mine not in short:
            raise _usage("%s is not the key of a validator of the new set" % path)
        out[short.index(mine)] = path
    missing = [i for i in range(len(keys)) if i not in out]
    if missing:
        raise _usage("the DKG needs every validator of the new set: no key file for %s" % missing)
    return out


def _dkg_result(path: str | None, epoch: int, height: int, keys: list[bytes]) -> tuple[bytes | None, list | None]:
    """(group key, verifying shares) of a ``set-dkg`` result for this change, or (None, None) without one."""
    from ledgerlink.tools.admin import _usage

    if path is None:
        return None, None
    try:
        d = json.loads(Path(path).read_text())
        if (d["epoch"], d["height"], d["set"]) != (epoch, height, [k.hex() for k in keys]):
            raise _usage("%s is the DKG of another change (epoch %s, height %s)" % (path, d["epoch"], d["height"]))
        group_key = bytes.fromhex(d["group_key"])
        verifying = [bytes.fromhex(v) for v in d["verifying_shares"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _usage("DKG file %s is not usable: %s" % (path, exc)) from None
    if len(group_key) != 33 or len(verifying) != len(keys) or any(len(v) != 33 for v in verifying):
        raise _usage("DKG file %s: a 33-byte group key and one 33-byte verifying share per validator needed" % path)
    return group_key, verifying


def cmd_set_dkg(ctx: Any, args: argparse.Namespace) -> int:
    from ledgerlink.tools.admin import EXIT_OK

    trusted = follow(ctx)
    keys = new_keys(trusted.keys, args)
    epoch = trusted.epoch + 1
    holders = _holders(ctx, keys, args.holder_key)
    group_key, verifying = run_dkg(ctx.chain_id, epoch, keys, holders)
    Path(args.out).write_text(json.dumps({"epoch": epoch, "height": args.height, "set": [k.hex() for k in keys],
                                          "group_key": group_key.hex(),
                                          "verifying_shares": [v.hex() for v in verifying]}) + "\n")
    print("epoch %d: group key %s of %d validators (t = %d); shares beside their key files; result in %s"
          % (epoch, group_key.hex(), len(keys), validator_set.spv.quorum(len(keys)), args.out))
    return EXIT_OK


def _addresses(args: argparse.Namespace) -> list[tuple[bytes, str, int, int]]:
    """(key, host, peer port, client port) of each ``--add-address``, paired with the ``--add`` at its place."""
    from ledgerlink.tools.admin import _usage

    if len(args.add_address) > len(args.add):
        raise _usage("%d --add-address for %d --add" % (len(args.add_address), len(args.add)))
    out = []
    for key, address in zip(args.add, args.add_address):
        host, _, ports = address.rpartition(":")
        host, _, peer_port = host.rpartition(":")
        try:
            ports_ok = all(0 < int(p) < 65536 for p in (peer_port, ports))
        except ValueError:
            ports_ok = False
        if not host or not ports_ok:
            raise _usage("--add-address %s: want HOST:PEER_PORT:CLIENT_PORT" % address)
        out.append((ledger_tx.compress_pubkey(bytes.fromhex(key)), host, int(peer_port), int(ports)))
    return out


def write_addresses(ctx: Any, args: argparse.Namespace) -> None:
    """Name the added validators' addresses in the peers file the nodes here read when the set grows
    (their links to a new validator start at the switch). An address is not trusted: the node
    authenticates the peer with the key of the certified change."""
    from ledgerlink.tools.admin import _usage

    addresses = _addresses(args)
    if not addresses:
        return
    path = Path(args.peers) if args.peers else default_peers_file(ctx.config)
    for key, host, peer_port, client_port in addresses:
        try:
            write_peer_address(path, key, host, peer_port, client_port)
        except (OSError, ValueError) as exc:
            raise _usage("peers file %s not writable: %s" % (path, exc)) from None
        print("validator %s listens at %s:%d (clients %d): in %s" % (key.hex(), host, peer_port, client_port, path))


def _approval(ctx: Any, trusted: TrustedSet, key_file: str, keys: list[bytes], height: int,
              group_key: bytes | None = None) -> list:
    from ledgerlink.tools.admin import _usage, load_key

    priv = load_key(key_file, "validator key")
    mine = ledger_tx.compress_pubkey(ctx.crypto.public_key(priv, True))
    current = [ledger_tx.compress_pubkey(k) for k in trusted.keys]
    if mine not in current:
        raise _usage("%s is not the key of a validator of the current set" % key_file)
    sig = ledger_tx.approve_set_change(ctx.chain_id, priv, trusted.epoch + 1, keys, height, ctx.crypto, group_key)
    return [current.index(mine), sig]


def cmd_approve_set(ctx: Any, args: argparse.Namespace) -> int:
    from ledgerlink.tools.admin import EXIT_OK

    trusted = follow(ctx)
    keys = new_keys(trusted.keys, args)
    group_key, _ = _dkg_result(args.dkg, trusted.epoch + 1, args.height, keys)
    index, sig = _approval(ctx, trusted, args.key, keys, args.height, group_key)
    write_addresses(ctx, args)
    Path(args.out).write_text(json.dumps({"epoch": trusted.epoch + 1, "height": args.height, "index": index,
                                          "set": [k.hex() for k in keys], "signature": sig.hex()}) + "\n")
    print("validator %d approves epoch %d: %d validators from height %d; approval in %s"
          % (index, trusted.epoch + 1, len(keys), args.height, args.out))
    return EXIT_OK


def cmd_set_change(ctx: Any, args: argparse.Namespace) -> int:
    from ledgerlink.tools.admin import EXIT_OK, _usage, load_key, now_ms

    trusted = follow(ctx)
    keys = new_keys(trusted.keys, args)
    group_key, verifying = _dkg_result(args.dkg, trusted.epoch + 1, args.height, keys)
    if trusted.group_key is not None and group_key is None and not args.no_threshold:
        raise _usage("the current set signs threshold headers: give the new set's --dkg (set-dkg), "
                     "or --no-threshold to stop them")
    approvals = {}
    for path in args.approval:
        try:
            a = json.loads(Path(path).read_text())
            if (a["epoch"], a["height"], a["set"]) != (trusted.epoch + 1, args.height, [k.hex() for k in keys]):
                raise _usage("%s approves another change (epoch %s, height %s)" % (path, a["epoch"], a["height"]))
            approvals[int(a["index"])] = bytes.fromhex(a["signature"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise _usage("approval file %s is not usable: %s" % (path, exc)) from None
    for key_file in args.approve_key:
        index, sig = _approval(ctx, trusted, key_file, keys, args.height, group_key)
        approvals[index] = sig
    need = validator_set.spv.quorum(len(trusted.keys))
    if len(approvals) < need:
        raise _usage("%d approvals of the current %d validators, %d needed" % (len(approvals), len(trusted.keys), need))
    write_addresses(ctx, args)
    admin = load_key(ctx.admin_key_path, "admin key")
    tx = ledger_tx.validator_set_change_tx(ctx.chain_id, admin, trusted.epoch + 1, keys, args.height,
                                           sorted(approvals.items()), now_ms(), group_key=group_key,
                                           verifying_shares=verifying, backend=ctx.crypto)
    res, line = ctx.submit(tx, "validator set change")
    print("epoch %d: %d validators (set hash %s) from height %d, recorded at height %d"
          % (trusted.epoch + 1, len(keys), validator_set.set_hash(keys, group_key).hex(), args.height, res["height"]))
    print(line)
    return EXIT_OK


def cmd_follow_set(ctx: Any, args: argparse.Namespace) -> int:
    from ledgerlink.tools.admin import EXIT_OK

    trusted = follow(ctx)
    print("epoch %d: %d validators from height %d (each change verified against the set before it)"
          % (trusted.epoch, len(trusted.keys), trusted.from_height))
    if trusted.group_key is not None:
        print("  group key %s" % trusted.group_key.hex())
    for i, key in enumerate(trusted.keys):
        print("  %d %s" % (i, key.hex()))
    return EXIT_OK
