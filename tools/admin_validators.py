"""``ledgerlink admin approve-set``, ``set-change`` and ``follow-set``: change the validator set through the ledger.

A validator set change names the new set, the height H from which it signs blocks, and approvals of
2f+1 validators of the current set (``ledger_tx.validator_set_change_tx``). Each validator's operator
signs an approval with ``approve-set`` (or ``set-change --approve-key`` signs with key files held
where it runs); ``set-change`` collects them, submits the change with the admin key and shows the
recorded change. ``--add-address`` names where an added validator listens in the peers file of the
nodes where it runs (they link to it at the switch; a site whose nodes run elsewhere copies the entry
into each node's peers file). The current set and epoch are not taken on trust: starting from the cluster
config's validators, each change is followed with its proof (``validator_set.follow_set_change``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ledgerlink.core.errors import LedgerlinkError
from ledgerlink.ledger.transport import default_peers_file, write_peer_address
from ledgerlink.protocol import ledger_tx, validator_set
from ledgerlink.protocol.validator_set import TrustedSet

MAX_EPOCHS = 1 << 16


def add_parser(with_ledger: Any) -> None:
    """The subcommands, on ``ledgerlink admin``'s parser (``with_ledger`` adds the ledger options)."""
    a = with_ledger("approve-set", help="as a validator: sign an approval of a new validator set")
    a.add_argument("--key", required=True, metavar="FILE", help="this validator's private key file")
    _set_arguments(a)
    a.add_argument("--out", required=True, metavar="FILE", help="approval file to write (JSON)")
    s = with_ledger("set-change", help="submit a validator set change approved by 2f+1 of the current set")
    _set_arguments(s)
    s.add_argument("--approval", action="append", default=[], metavar="FILE",
                   help="an approval file made with approve-set (repeatable)")
    s.add_argument("--approve-key", action="append", default=[], metavar="FILE",
                   help="a validator key file held here: approve with it (repeatable)")
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

    trusted = TrustedSet(ctx.chain_id, ctx.validators)
    for _ in range(MAX_EPOCHS):
        answer = _ask(ctx, "set_change", epoch=trusted.epoch + 1)
        if answer is None:
            break
        try:
            trusted = validator_set.follow_set_change_proof(trusted, answer["proof"], ctx.crypto)
        except (LedgerlinkError, KeyError, TypeError) as exc:
            raise AdminError("validator set change %d does NOT verify: %s" % (trusted.epoch + 1, exc)) from None
    ctx.validators = trusted.keys
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


def _approval(ctx: Any, trusted: TrustedSet, key_file: str, keys: list[bytes], height: int) -> list:
    from ledgerlink.tools.admin import _usage, load_key

    priv = load_key(key_file, "validator key")
    mine = ledger_tx.compress_pubkey(ctx.crypto.public_key(priv, True))
    current = [ledger_tx.compress_pubkey(k) for k in trusted.keys]
    if mine not in current:
        raise _usage("%s is not the key of a validator of the current set" % key_file)
    sig = ledger_tx.approve_set_change(ctx.chain_id, priv, trusted.epoch + 1, keys, height, ctx.crypto)
    return [current.index(mine), sig]


def cmd_approve_set(ctx: Any, args: argparse.Namespace) -> int:
    from ledgerlink.tools.admin import EXIT_OK

    trusted = follow(ctx)
    keys = new_keys(trusted.keys, args)
    index, sig = _approval(ctx, trusted, args.key, keys, args.height)
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
        index, sig = _approval(ctx, trusted, key_file, keys, args.height)
        approvals[index] = sig
    need = validator_set.spv.quorum(len(trusted.keys))
    if len(approvals) < need:
        raise _usage("%d approvals of the current %d validators, %d needed" % (len(approvals), len(trusted.keys), need))
    write_addresses(ctx, args)
    admin = load_key(ctx.admin_key_path, "admin key")
    tx = ledger_tx.validator_set_change_tx(ctx.chain_id, admin, trusted.epoch + 1, keys, args.height,
                                           sorted(approvals.items()), now_ms(), backend=ctx.crypto)
    res, line = ctx.submit(tx, "validator set change")
    print("epoch %d: %d validators (set hash %s) from height %d, recorded at height %d"
          % (trusted.epoch + 1, len(keys), validator_set.set_hash(keys).hex(), args.height, res["height"]))
    print(line)
    return EXIT_OK


def cmd_follow_set(ctx: Any, args: argparse.Namespace) -> int:
    from ledgerlink.tools.admin import EXIT_OK

    trusted = follow(ctx)
    print("epoch %d: %d validators from height %d (each change verified against the set before it)"
          % (trusted.epoch, len(trusted.keys), trusted.from_height))
    for i, key in enumerate(trusted.keys):
        print("  %d %s" % (i, key.hex()))
    return EXIT_OK
