"""Validator set changes in the PBFT replica: the switch at the effective height, and sets by height.

The application records a change (``LedgerState.scheduled_validator_set``: epoch, effective height
H, keys) in a block below H; every replica commits that block, so all of them know the same change.
When a replica commits block H-1 it switches (``after_commit``): from height H on its validator list,
n, f, quorum, primary rotation (``view mod n``), message decoding and the header's
``validators_hash`` are the new set's. Heights below H were all certified by the old set; the
replica keeps each set with its first height (``validators_at``) to check the certificates that
view-changes carry for lower heights. Votes and proposals for heights at or above H logged before
the switch were checked against the old set, so they are dropped at it (retransmission brings the
valid ones again). A validator of both sets keeps its index (the ledger refuses a change that moves
one), so messages of a replica that has not switched yet still verify where its key is unchanged.

A replica whose key is not in the set in force (a removed validator, or a new one catching up
through blocks certified by the old set) is not a member: it sends only fetch-blocks and block
answers, never a vote, proposal, checkpoint or view-change, so a removed node cannot vote and a new
one cannot vote before its set is in force. Others refuse a removed node's messages (its index is
outside the new set, or the key at it is another one: "unknown sender" or "bad signature").

A change may carry the new set's FROST group key and verifying shares (made by the new set's DKG;
the approvals cover them through the set hash). At the switch each replica takes its signing share of
the new key from ``replica.epoch_share(epoch)`` (the node reads the file named by the epoch beside
its key), kept only when it matches its verifying share in the change; the aggregator of the new set
then makes threshold certificates under the new key from H on. A replica without a matching share
votes as before and signs no threshold share.

Tested in tests/ledger/test_reconfig.py, tests/ledger/test_reconfig_threshold_cluster.py and over 1,000+ seeds by ``ledgerlink.ledger.consensus.reconfig_sim``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ledgerlink.ledger.consensus import messages as m
from ledgerlink.core import frost, smt
from ledgerlink.protocol.ledger_tx import compress_pubkey
from ledgerlink.protocol.codes import RECORD_VALIDATOR_SET

if TYPE_CHECKING:
    from ledgerlink.ledger.consensus.replica import Replica

log = logging.getLogger("ledgerlink.reconfig")


def _short(key: bytes) -> bytes:
    return compress_pubkey(key)


def own_key(replica: "Replica") -> bytes | None:
    """The replica's public key in compressed form, or None when the crypto backend cannot derive it."""
    derive = getattr(replica.crypto, "public_key", None)
    if derive is None:
        return None
    return _short(derive(replica._key, True))


def is_member(replica: "Replica", validators: tuple[bytes, ...]) -> bool:
    """The replica's index names its own key in ``validators``."""
    if replica.index >= len(validators):
        return False
    mine = getattr(replica, "own_key", None)
    return mine is None or _short(validators[replica.index]) == mine


def attach(replica: "Replica") -> None:
    """Set up a new replica's set history (the configured set from height 0) and membership."""
    replica.set_history = [(0, tuple(replica.config.validators), replica._vhash)]
    replica.own_key = own_key(replica)
    replica.member = is_member(replica, replica.config.validators)
    replica.switch_view_change = False
    replica.joined = False
    replica.epoch = 0                        # epoch of the set in force
    replica.epoch_share = None               # epoch -> this validator's FROST signing share of that set, or None
    replica.set_change_proofs = {}          # epoch -> (height of the recording block, record, smt proof)


def validators_at(replica: "Replica", height: int) -> tuple[tuple[bytes, ...], bytes]:
    """(keys, header validators-hash) of the set that certifies ``height`` as far as this replica
    knows (its newest set for heights above the last change it knows of)."""
    found = replica.set_history[0]
    for entry in replica.set_history:
        if entry[0] <= height:
            found = entry
    return found[1], found[2]


def _scheduled(app: Any) -> tuple | None:
    get = getattr(app, "scheduled_validator_set", None)
    return None if get is None else get()


def _config_for(config: Any, change: tuple) -> Any:
    """``config`` with the changed set (and its threshold key, when the change carries one)."""
    keys = tuple(change[2])
    fields = {"validators": keys}
    names = {f.name for f in dataclasses.fields(config)}
    if "group_key" in names:
        group_key = change[3] if len(change) > 3 else None
        shares = change[4] if len(change) > 4 and change[4] is not None else ()
        fields.update(group_key=group_key, verifying_shares=tuple(shares))
    return dataclasses.replace(config, **fields)


def _header_hash(config: Any) -> bytes:
    from ledgerlink.ledger.consensus import replica as replica_module

    make = getattr(replica_module, "header_validators_hash", None)
    return make(config) if make is not None else m.validators_hash(config.validators)


def after_commit(replica: "Replica", height: int, live: bool) -> None:
    """Note a change the committed state schedules; switch when ``height`` is the block before it
    (``live``: not while a restore replays the stored blocks)."""
    change = _scheduled(replica.app)
    if change is None:
        return
    start = change[1]
    if replica.set_history[-1][0] < start:
        cfg = _config_for(replica.config, change)
        replica.set_history.append((start, cfg.validators, _header_hash(cfg)))
        prove = getattr(replica.app, "prove", None)
        if prove is not None:                   # the record under this block's root, certified by the old set
            _, record, proof = prove(RECORD_VALIDATOR_SET, change[0])
            replica.set_change_proofs[change[0]] = (height, record, proof)
    if start == height + 1:
        switch(replica, _config_for(replica.config, change), start, live)
        replica.epoch = change[0]
        take_share(replica)


def share_path(key_file: str | Path, epoch: int) -> Path:
    """Where a validator's FROST signing share of epoch ``epoch``'s set is kept: beside its key file,
    ``<name>.epoch<epoch>.share`` (the genesis set's is ``<name>.share``)."""
    path = Path(key_file)
    return path.with_suffix(".share") if epoch == 0 else path.with_name("%s.epoch%d.share" % (path.stem, epoch))


def share_loader(key_file: str | Path) -> Callable[[int], int | None]:
    """``epoch -> signing share`` read from ``share_path`` (None when there is no such file)."""
    def load(epoch: int) -> int | None:
        path = share_path(key_file, epoch)
        if not path.exists():
            return None
        return int(path.read_text().strip(), 16)
    return load


def take_share(replica: "Replica") -> bool:
    """Give the replica its signing share of the set in force (``replica.epoch_share``), when the set
    has a group key and the share matches this validator's verifying share; True when it has one. A
    missing or foreign share leaves it without one (it votes, and signs no threshold share)."""
    cfg = replica.config
    replica._threshold_share = None
    load = getattr(replica, "epoch_share", None)
    if cfg.group_key is None or load is None or not replica.member or replica._rng is None:
        return False
    try:
        share = load(replica.epoch)
    except (OSError, ValueError) as exc:
        log.warning("validator %d: signing share of epoch %d unreadable: %s", replica.index, replica.epoch,
                    type(exc).__name__)
        return False
    if share is None:
        log.warning("validator %d: no signing share of epoch %d; no threshold shares from it",
                    replica.index, replica.epoch)
        return False
    if not 0 < share < frost.N or replica.index >= len(cfg.verifying_shares) \
            or frost.verifying_share(share) != cfg.verifying_shares[replica.index]:
        log.warning("validator %d: signing share of epoch %d does not match its verifying share",
                    replica.index, replica.epoch)
        return False
    replica._threshold_share = share
    return True


def switch(replica: "Replica", cfg: Any, start: int, live: bool) -> None:
    """Make ``cfg`` (the replica's config with the new set) its config for heights from ``start``
    (= its height + 1) on. A validator of both sets then moves to the next view: the new set starts
    with a new-view made of its own members' view-changes, which every member can check and later
    hand to one that switches late (a new-view of the old set may hold a removed validator's)."""
    was_member = replica.member
    old = replica.config.validators
    keys = cfg.validators
    same = {i for i in range(min(len(old), len(keys))) if _short(old[i]) == _short(keys[i])}
    replica.config = cfg
    replica._vhash = _header_hash(cfg)
    if hasattr(replica, "_threshold_share"):
        replica._threshold_share = None          # a share of the old group key signs nothing of the new set
    replica._decode = functools.partial(_decode, cfg.chain_id, keys, replica.crypto, cfg.limits)
    replica.member = is_member(replica, keys)
    for h in [h for h in replica.slots if h >= start]:
        del replica.slots[h]
    for h in [h for h in replica.checkpoints if h >= start]:
        del replica.checkpoints[h]
    replica.view_changes = {}
    replica.peer_heights = {i: h for i, h in replica.peer_heights.items() if i in same}
    replica.peer_views = {i: v for i, v in replica.peer_views.items() if i in same}
    replica.convicted = {i: p for i, p in replica.convicted.items() if i in same}
    replica.slow_suspects = {i for i in replica.slow_suspects if i in same}
    replica.new_view_raw = None
    replica.progress_deadline = None
    if replica.chain:
        replica.view = max(replica.view, replica.chain[-1].cert.view)   # where the last old-set block committed
    replica.switch_view_change = live and replica.member
    replica.joined = not was_member


def switch_view_change(replica: "Replica") -> bool:
    """At the first timer after a switch, a validator of both sets moves to the next view (see
    ``switch``); one that has just joined the set moves to the view f+1 of its peers are in, if higher
    than its own (it noted their views while it was not a member and could not follow them).
    True when it started a view change."""
    if not replica.switch_view_change:
        return False
    replica.switch_view_change = False
    view = replica.view + 1
    if replica.joined:
        views = sorted((v for i, v in replica.peer_views.items() if i != replica.index), reverse=True)
        f = replica.config.f
        view = views[f] if len(views) > f else -1
        if view <= replica.view:
            return False
    replica._start_view_change(view)
    return True


def _decode(chain_id: str, validators: tuple[bytes, ...], crypto: m.Crypto, limits: m.Limits,
            data: bytes) -> m.Message:
    return m.decode_message(data, chain_id, validators, crypto, limits)


def below_chain(replica: "Replica", raw_pre_prepare: bytes) -> bool:
    """The pre-prepare (not verified) names a height the replica has committed: a prepared proof for it,
    which may be signed by a set no longer in force, is of no use."""
    try:
        a = m.loads(raw_pre_prepare)
    except m.MessageError:
        return False
    return isinstance(a, list) and len(a) > 3 and m.is_uint(a[3]) and a[3] <= replica.height


def member_effects(replica: "Replica", effects: list) -> list:
    """What a replica outside the set in force may send: fetch-blocks and block answers only."""
    if replica.member:
        return effects
    from ledgerlink.ledger.consensus.replica import Broadcast, Send

    out = []
    for e in effects:
        if isinstance(e, Broadcast):
            continue
        if isinstance(e, Send) and m.kind_of(e.data) not in (m.FETCH_BLOCKS, m.BLOCKS):
            continue
        out.append(e)
    return out


# --- ledger node process -------------------------------------------------------------------------------


def follow_peers(node: Any) -> None:
    """Point a node's peer transport at the keys of the set in force (after its replica switched): a
    peer index whose key changed is authenticated with the new key from now on, and links to it are
    cut so they reconnect and prove it. Validators added beyond the known addresses get links at their
    addresses in the operator's peers file (``PeerNetwork.add_validators``; asked again at the next
    commit while one is missing)."""
    keys = node.replica.config.validators
    if getattr(node, "_peer_keys", None) is keys:
        return
    node._peer_keys = keys
    nodes = node.config.nodes
    for i, key in enumerate(keys[:len(nodes)]):
        if _short(nodes[i].pubkey) == _short(key):
            continue
        nodes[i] = dataclasses.replace(nodes[i], pubkey=key)
        net = node.net
        writer = net.peers.get(i)
        if writer is not None:
            writer.transport.abort()
        link = net.links.get(i)
        if link is not None and link.writer is not None:
            link.writer.transport.abort()
    if len(keys) > len(nodes):
        from ledgerlink.ledger.transport import default_peers_file

        if not node.net.add_validators(keys, default_peers_file(node.config)):
            node._peer_keys = None


def set_change_answer(node: Any, req: dict) -> dict:
    """The node's answer to ``set_change`` {epoch}: the ``set-change-proof`` [certified header of the block
    that recorded the change, record, smt proof] a light client follows the change with."""
    epoch = req.get("epoch")
    found = node.replica.set_change_proofs.get(epoch) if type(epoch) is int else None
    if found is None:
        return {"ok": False, "error": "no validator set change of that epoch"}
    height, record, proof = found
    return {"ok": True, "height": height, "proof": [node._certified(height), record, smt.proof_to_cbor_obj(proof)]}
