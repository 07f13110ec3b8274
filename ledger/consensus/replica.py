"""Sans-I/O PBFT replica (Castro-Liskov) that orders ledger blocks among n = 3f+1 validators.

A ``Replica`` is a deterministic state machine: the node adapter feeds it events (``receive``,
``submit``, ``tick``) with the current time and carries out the effects it returns, in list order
(``Send``, ``Broadcast``, ``Persist``, ``Committed``, ``Dropped``). It does no I/O, reads no clock
and draws no randomness. A ``Persist`` must be durable before any later effect is carried out: the
replica never votes on height h+1 before the effect list that persists block h.

Protocol. The PBFT sequence number is the block height and one block is in flight at a time
(window 1); the primary of view v (``v mod n``) batches pending transactions (up to ``max_batch``, or
fewer once the oldest has waited ``batch_timeout_ms``), executes the batch on the application's
speculative copy and proposes the full header. Backups re-execute and prepare only when their header
is byte-identical. 2f prepares plus the pre-prepare make a replica *prepared*; it then sends a commit
whose signature is a commit-certificate vote; 2f+1 commits commit the block, which is persisted with
its certificate. Every ``checkpoint_interval`` heights replicas exchange checkpoints; 2f+1 matching
ones make a stable checkpoint and the per-height message log at or below it is discarded. A backup
that sees no progress on pending work for ``view_change_timeout_ms`` (doubling per failed view, up to
``2**max_backoff_exp``; progress is a commit or the first valid proposal for the next height in its
view) moves to the next view; f+1 view-changes for higher views make a replica
join the smallest of them.

Slow primary (after Aardvark, NSDI'09). A primary can stay just inside the timeout, proposing each
block shortly before backups would give up on it. So each backup also measures the primary's
service in its view: for every block it commits normally, ``d`` is the time from when it was ready
for that proposal (its previous commit, or the arrival of work in an empty pool) with transactions
waiting in its pool, to the arrival of the valid proposal (the primary's share of the block time),
and ``p`` the time from the proposal to the commit (the replicas' share: execution, two vote
rounds, fsyncs). With a grace ``g`` = ``batch_timeout_ms`` + ``slow_primary_grace_ms`` per block
for batching and the primary's tick, the pool and the recent blocks allow one block per
``p + g``. When, over the last ``slow_primary_window_ms`` of such blocks in the view (at least
``SLOW_PRIMARY_MIN_BLOCKS``), sum(d) > (``SLOW_PRIMARY_FRACTION`` - 1) * sum(p + g), the primary
delivers less than a third of that rate and the backup demands a view change (moves to the next
view; f+1 such demands move every honest replica). An honest primary under load keeps its view:
it proposes the next batch as soon as it commits the last one, so ``d`` is its own execution of
the batch plus one message delay (and at most the batch timeout), while ``p`` contains the
backups' execution of the same batch plus two vote rounds; load lengthens both alike, so ``d``
stays below ``p + g`` (at most 0.84 of it in the simulator's saturated runs). The bound (``d`` up
to twice ``p + g``) leaves room above that because on a machine whose CPUs and disk the validators share, one primary
process stalls while the others run (a bound of one half demoted honest primaries in most 15 s
runs at a load of 20 on 2 cores); the window and its two blocks keep one slow fsync or stall from
costing a primary its view. But a block on which ``d`` exceeds ``p + g`` by more than half the
view-change timeout (``SLOW_PRIMARY_ALONE``) is slow by itself, so a primary that holds each
proposal just under the timeout loses its view after its first such block (with an 800 ms hold
and a 1,000 ms timeout, while ``p + g`` stays under 300 ms; the window rule judges the rest). A primary a
backup demoted for slowness stays a suspect of that backup until it serves a full window within
the bound: when the view rotates back to it, its first slow block is enough (its turn comes every n
views, and each costs one block instead of a window). A backup
that lags measures ``d`` near 0 (the proposal is there when it gets ready), and a backup with no
transactions waiting measures nothing, so neither blames the primary for its own slowness or for
idle time. The new primary's new-view carries 2f+1 view-changes; from them every
replica derives the highest certified height H and the highest-view prepared proposal at H+1, which
the new primary must propose again unchanged. A replica keeps the last new-view it accepted, also
after it moved on to a later view change, and sends it to a replica whose view-change is for a lower
view: replicas left waiting in a view change below quorum (their peers moved on) join that view and
time out from it. A replica behind the others (evidence: a commit
certificate, 2f+1 commits for a proposal it never got, or f+1 replicas working above its height)
fetches committed blocks, verifies each certificate and the header chain, re-executes and checks
the state root. With no work of its own it also asks one peer in turn for newer blocks every
``idle_sync_ms``, so a replica that missed the last blocks' votes catches up with no new traffic.

Equivocation. A backup that holds two pre-prepares its primary signed for one view and height
with different headers has a proof of misbehaviour: it sends both to every other validator in an
``equivocation`` message, and every replica that holds the proof (checked like the pre-prepares
themselves) leaves the view that primary leads and skips every later view it would lead (the
view after it is led by the next validator). An honest validator never signs two pre-prepares
for one view and height (restored replicas abstain where they may have proposed), so only a
Byzantine one can be skipped, and with at most f of them every n views hold n - f honest
primaries. So an equivocation one backup sees moves all honest replicas at once, and the
equivocator never leads again (until a replica restarts and forgets the proof, which it learns
again from the next pair).

Threshold certificates. With a FROST group key in ``Config`` and the validator's signing share, each
committed block also gets a ``threshold-certificate`` [view, signature] over its commit bytes, so a
device or gateway checks a header with one verification at any n (docs/protocol.md, "PBFT messages
between validators"). A replica offers each aggregator its own round-one commitment per height (the
primary with its commit vote; one other validator in turn while the height waits, so a primary that
never aggregates cannot withhold certificates), signs only a header it committed and only with the
nonces of the commitment it gave that aggregator, which it drops before signing (nonces are never
reused; a crashed replica has none); an aggregator with t = 2f+1 commitments asks those signers,
checks the aggregate once, names the senders of bad shares (never asked again for that height) and
retries without signers that did not answer. Every replica verifies the certificate and persists it
(``PersistThreshold``); ``restore`` verifies it again. The simulator (``--threshold``) checks that no
certificate verifies for a header other than the committed one and that every block of each live
honest replica gets one.

Security. Protects the agreement of honest replicas on one block per height against up to f
Byzantine validators (equivocation, forged or replayed votes, invalid proposals, lying view-changes)
and an adversarial network (loss, delay, reordering, duplication, partitions). Every message is
signed by its sender and checked; malformed, oversized, unknown-sender, bad-signature, stale,
duplicate and conflicting messages are refused with a ``Dropped`` effect and no state change.
Client transactions are validated by the application (``check_tx``) and deduplicated by hash;
committed transactions are never accepted again. Tested in tests/ledger/test_pbft_*.py with targeted
scenarios and thousands of seeded adversarial schedules (``ledgerlink.ledger.consensus.simulator``).

Durability. Before its first vote ever (pre-prepare, prepare or commit), before its first message
in a new view and before each commit vote, the replica emits ``SaveVotes`` with its vote record
(view, whether it is changing view, prepared proof); the node makes it durable before later effects.
``restore`` takes the record back: the replica returns to its view (re-sending its view-change if it
was changing view) with its prepared proof, and casts no vote at the height above its last block in
that view or a lower one, where it may already have voted. A store without a record belongs to a
replica that never voted: it abstains from nothing, so a fresh cluster commits in view 0 (no view
change in its first second). So a restarted replica stays honest: it never votes for two proposals
of one view and height and never forgets a prepared proof it voted to commit
(tests/ledger/test_pbft_replica.py; the simulator restarts an extra, honest validator in 30% of its
schedules).

Limits. Committed blocks and the hashes
of committed transactions are kept in memory (blocks answer fetches); the application is replayed
from the blocks on restore. Blocks sent to a peer (fetch answers and pushes to a replica whose
view-change shows it behind) draw on a per-peer byte budget that refills at ``max_message_size //
SEND_BUDGET_DIV`` bytes per second (512 KiB/s by default; one full answer of half a message at
once) and each answer counts at least ``max_message_size // FETCH_MIN_COST_DIV`` bytes (so at
most 32 answers a second); a fetch beyond it is dropped ("fetch rate"), which bounds what a peer
asking ``fetch-blocks 0..10^6`` in a loop costs in encoding and signing
(tests/ledger/test_pbft_replica.py, and the simulator's flooding adversary). A replica that catches
up asks its peers in turn, so it fetches up to 512 KiB/s from each (at 150 tx/s a block is a few
kB; at saturation the chain grows by about 0.6 MB/s, which three peers out-supply).

The node's peer transport already caps each peer's fetch-blocks (``PortLimits.fetch_rate``) and
every other kind per second before the replica sees them (``ledgerlink.ledger.transport``); the
limits here hold for any transport (the simulator's), and bound the bytes of blocks sent.
Cheap refusals before the signature check (``receive``): a peer's fetch-blocks beyond
``FETCH_REQUESTS_PER_S`` a second, and a prepare or commit that would be dropped and tells nothing
new about its sender (a second vote of the sender for a view and height, a vote for a stale height
or another view) are dropped unverified, so a validator that floods such messages costs a CBOR
decode each, not an ECDSA verification. A vote tells something new only when it shows its sender
above our height (``_maybe_fetch`` fetches only above it) or in a view above ours and above the
sender's last noted one (only those can make us join a view), so a late vote for a height we
committed is not verified. Votes that can no longer change what this replica does are not verified
either ("prepared already", "certified already"): a prepare for a (view, height, header hash) of
which 2f verified prepares are logged (the 2f a prepared certificate needs, the prepared proof of
a view-change carries and ``_check_prepared`` verifies), and a commit for one of which 2f+1
verified commits are logged (a commit certificate). Neither lets a Byzantine validator starve a
replica of a vote it needs: the 2f or 2f+1 logged votes are verified ones from distinct validators
for that very hash, and votes for any other hash are verified as before. Nothing else reads votes
beyond a quorum (equivocation proofs are made of pre-prepares). So at n = 100 a replica verifies
about 2f prepares and 2f commits a block instead of n - 1 and more. The budgets are per transport
sender, which the peer link authenticates (the transport's signed-nonce handshake). An
equivocation message (three signature checks) is recognised by its first two bytes; a peer may
send n of them at once and one a second after that.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol, Sequence

from ledgerlink.core import frost
from ledgerlink.core.errors import LedgerlinkError
from ledgerlink.ledger.consensus import messages as m, reconfig
from ledgerlink.ledger.consensus.messages import (
    Block, CommitCertificate, Header, Message, MessageError, ThresholdCertificate, quorum,
)


class App(Protocol):
    """The replicated application (the ledger contracts, or ``kv_app.KVApp`` in tests).

    ``execute`` applies a batch to a speculative copy of the committed state and returns the state
    root; it must be deterministic and must not raise on transactions that passed ``check_tx``
    or ``precheck_tx`` (the cheaper check of a transaction forwarded by another validator)
    (a transaction that fails its contract is recorded as failed, not refused). ``commit(height)``
    makes the speculative state the committed one; ``rollback`` discards it.
    """

    def check_tx(self, tx: bytes) -> int | None: ...
    def precheck_tx(self, tx: bytes) -> int | None: ...
    def execute(self, height: int, time_ms: int, txs: Sequence[bytes]) -> bytes: ...
    def commit(self, height: int) -> None: ...
    def rollback(self) -> None: ...


@dataclass(frozen=True)
class Config:
    """Parameters shared by all validators (times in milliseconds)."""

    chain_id: str
    validators: tuple[bytes, ...]
    max_batch: int = 64
    batch_timeout_ms: int = 20
    max_tx_size: int = 4096
    max_message_size: int = 4 << 20
    max_pool: int = 10000
    view_change_timeout_ms: int = 1000
    max_backoff_exp: int = 4
    retransmit_ms: int = 250
    checkpoint_interval: int = 16
    max_clock_skew_ms: int = 5000
    max_blocks_per_reply: int = 16
    lookahead: int = 4
    idle_sync_ms: int = 2000
    slow_primary_window_ms: int = 1000
    slow_primary_grace_ms: int = 50
    group_key: bytes | None = None                  # FROST group key of the validators (33 B), or none
    verifying_shares: tuple[bytes, ...] = ()        # FROST verifying share of each validator (33 B each)

    @property
    def n(self) -> int:
        return len(self.validators)

    @property
    def f(self) -> int:
        return (self.n - 1) // 3

    @property
    def quorum(self) -> int:
        return quorum(self.n)

    def primary(self, view: int) -> int:
        return view % self.n

    @property
    def limits(self) -> m.Limits:
        return m.Limits(self.max_batch, self.max_tx_size, self.max_blocks_per_reply)


# --- effects ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Send:
    to: int
    data: bytes


@dataclass(frozen=True)
class Broadcast:
    """Send to every other validator; to ``first`` (a validator index), if set, before the others
    (where copies leave one after the other on one uplink, the one that needs it soonest gets it first)."""

    data: bytes
    first: int | None = None


@dataclass(frozen=True)
class Persist:
    """Store ``block`` (cbor [header, txs]) and its ``certificate`` durably before later effects."""

    height: int
    block: bytes
    certificate: bytes


@dataclass(frozen=True)
class PersistThreshold:
    """Store the ``threshold-certificate`` (cbor [view, frost-signature]) of committed block ``height``
    beside it; it is verified, and ``Replica.restore`` verifies it again."""

    height: int
    certificate: bytes


@dataclass(frozen=True)
class SaveVotes:
    """Store ``record`` (the replica's vote record, replacing the previous one) durably before later
    effects; ``Replica.restore`` takes it back."""

    record: bytes


@dataclass(frozen=True)
class Committed:
    height: int
    header: Header
    certificate: CommitCertificate
    txs: tuple[bytes, ...]


@dataclass(frozen=True)
class Dropped:
    """A refused message or transaction; ``tx`` is set when one transaction was refused."""

    reason: str
    sender: int | None = None
    tx: bytes | None = None


Effect = Send | Broadcast | Persist | PersistThreshold | SaveVotes | Committed | Dropped


# --- internal state -----------------------------------------------------------------------------

@dataclass
class _Proposal:
    view: int
    header: Header
    txs: tuple[bytes, ...]
    hash: bytes
    raw: bytes
    tx_hashes: tuple[bytes, ...] | None = None     # SHA-256 of each tx, once known


@dataclass
class _Slot:
    """Message log of one height."""

    proposals: dict[int, _Proposal] = field(default_factory=dict)
    prepares: dict[tuple[int, bytes], dict[int, bytes]] = field(default_factory=dict)
    commits: dict[tuple[int, bytes], dict[int, bytes]] = field(default_factory=dict)
    prepare_by: dict[tuple[int, int], bytes] = field(default_factory=dict)
    commit_by: dict[tuple[int, int], bytes] = field(default_factory=dict)
    rejected: set[int] = field(default_factory=set)
    my_prepare: dict[int, bytes] = field(default_factory=dict)
    my_commit: dict[int, bytes] = field(default_factory=dict)
    other_commits: dict[int, tuple[int, bytes, bytes]] = field(default_factory=dict)


@dataclass
class _Stored:
    block: Block
    cert: CommitCertificate
    hash: bytes


@dataclass
class _ViewChange:
    view: int
    sender: int
    committed: tuple[Header, CommitCertificate] | None
    prepared: _Proposal | None
    raw: bytes


_VOTES = (m.PRE_PREPARE, m.PREPARE, m.COMMIT)
SLOW_PRIMARY_FRACTION = 3     # a backup demands a view change below 1/3 of the rate the pool and recent blocks allow
SLOW_PRIMARY_MIN_BLOCKS = 2
SLOW_PRIMARY_ALONE = 2             # a wait over 1/2 of the view-change timeout beyond the replicas' share: slow
SLOW_PRIMARY_MAX_BLOCKS = 256      # samples kept (a window of blocks under 4 ms each is not judged)
FETCH_MIN_COST_DIV = 256
SEND_BUDGET_DIV = 8                # blocks sent to one peer: max_message_size / 8 bytes a second
FETCH_REQUESTS_PER_S = 50          # fetch-blocks a peer may send a second (burst as many)
MAX_PEEK = 256                     # messages up to this size are looked at before their signature
EQUIVOCATION_PREFIX = bytes([0x85, m.EQUIVOCATION])   # cbor: an array of 5 items, kind 10
MAX_REFORWARD_EXP = 3      # a pending tx goes to the primary again after 1, 2, 4, 8, 8, ... retransmit_ms


THRESHOLD_WINDOW = 64          # heights below the last block for which a threshold certificate is still made
THRESHOLD_RESEND_MAX = 8       # heights whose commitment a replica re-sends to the aggregator per retransmission
THRESHOLD_SHARE_TIMEOUT_DIV = 2    # an aggregation waits 2 * retransmit_ms for its shares, then retries
SHARES_PER_HEIGHT_MAX = 16     # shares a replica makes for one height (each costs a FROST signing)


def _txhash(tx: bytes) -> bytes:
    return hashlib.sha256(tx).digest()


def header_validators_hash(config: Config) -> bytes:
    """The ``validators-hash`` every header names: the validator keys, and the group key when there is one."""
    if config.group_key is None:
        return m.validators_hash(config.validators)
    return m.validators_hash(config.validators, config.group_key)


@dataclass
class _Aggregation:
    """The aggregator's state for one committed height without a threshold certificate."""

    commitments: dict[int, list] = field(default_factory=dict)   # validator -> its latest commitment
    bad: set[int] = field(default_factory=set)            # sent a bad share for this height: never asked again
    slow: set[int] = field(default_factory=set)           # did not answer the last request
    signers: tuple[int, ...] = ()                         # the request in flight (empty: none)
    request: list = field(default_factory=list)           # its commitments, by index
    shares: dict[int, int] = field(default_factory=dict)  # FROST index -> share received
    deadline: int = 0
    view: int = 0
    committed_at: int = 0


class Replica:
    """One PBFT validator; see the module docstring."""

    def __init__(self, index: int, config: Config, signing_key: bytes, app: App, crypto: m.Crypto,
                 now_ms: int, decoder: Callable[[bytes], Message] | None = None,
                 threshold_share: int | None = None, rng: Callable[[int], bytes] | None = None):
        """``decoder`` (optional) replaces ``messages.decode_message`` for this configuration, e.g.
        a cache of verified messages shared by the replicas of one process. ``threshold_share`` is this
        validator's FROST signing share (with ``config.group_key``; secret, never logged) and ``rng(n)``
        the randomness of its nonces: with both the replica helps make threshold certificates."""
        if index < 0:                  # an index outside the set: not a member (yet), see reconfig
            raise ValueError("replica index out of range")
        if threshold_share is not None and (config.group_key is None or rng is None
                                            or len(config.verifying_shares) != config.n):
            raise ValueError("a threshold share needs the group key, n verifying shares and an rng")
        self.index = index
        self.config = config
        self._key = signing_key
        self.app = app
        self.crypto = crypto
        self.now = now_ms
        self._vhash = header_validators_hash(config)
        self.view = 0
        self.in_view_change = False
        self.chain: list[_Stored] = []
        self.committed_txs: set[bytes] = set()
        self.committed_hashes: tuple[int, tuple[bytes, ...]] = (-1, ())   # the last block's tx hashes
        self.pool: OrderedDict[bytes, tuple[bytes, int, bool]] = OrderedDict()
        self.proposal_checked: set[bytes] = set()   # txs of valid proposals above the last block (checked)
        self._reforward: dict[bytes, tuple[int, int]] = {}    # tx hash -> (next re-forward time, interval)
        self.slots: dict[int, _Slot] = {}
        self.executed: bytes | None = None
        self.prepared_proof: tuple[_Proposal, dict[int, bytes]] | None = None
        self.stable_checkpoint = -1
        self.checkpoints: dict[int, dict[bytes, set[int]]] = {}
        self.view_changes: dict[int, dict[int, _ViewChange]] = {}
        self.my_view_change: bytes | None = None
        self.new_view_raw: bytes | None = None
        self.progress_deadline: int | None = None
        self.vc_deadline: int | None = None
        self.backoff = 0
        self.peer_heights: dict[int, int] = {}
        self.peer_views: dict[int, int] = {}
        self.certified_height = -1
        self.next_fetch = 0
        self.fetch_round = 0
        self.next_sync = now_ms + config.idle_sync_ms
        self.next_retransmit = now_ms + config.retransmit_ms
        self.nv_sent_to: dict[int, int] = {}
        self.pushed_to: dict[int, int] = {}
        self.committed_at = now_ms
        self.abstain_height = -1
        self.abstain_view = -1
        self.votes_saved = False            # a vote record was emitted (or restored): votes may leave
        self.waiting_since: int | None = None      # ready for the next proposal with work waiting
        self.proposed_at: int | None = None        # the valid proposal for the next height arrived
        self.service: deque[tuple[int, int]] = deque(maxlen=SLOW_PRIMARY_MAX_BLOCKS)   # (d, p) of recent blocks
        self.slow_primary_demands = 0               # view changes this replica demanded for a slow primary
        self.slow_suspects: set[int] = set()        # primaries demoted for slowness, not cleared since
        self.convicted: dict[int, bytes] = {}       # validator -> our signed equivocation proof against it
        self.send_budget: dict[int, tuple[int, int]] = {}   # peer -> (bytes of blocks it may get, at ms)
        self.fetch_budget: dict[int, tuple[float, int]] = {}  # peer -> (fetch requests it may send, at ms)
        self.proof_budget: dict[int, tuple[float, int]] = {}  # peer -> (equivocation messages it may send, at ms)
        self._threshold_share = threshold_share
        self._rng = rng
        self.threshold_certs: dict[int, ThresholdCertificate] = {}   # height -> verified threshold certificate
        self._early_certs: dict[int, dict[int, ThresholdCertificate]] = {}   # height above ours -> sender -> cert
        self._nonces: dict[int, dict[int, list]] = {}   # height -> aggregator -> our unused nonces (``_held_nonces``)
        self._shares_made: dict[int, int] = {}                        # height -> shares signed (a bound)
        self._aggregations: dict[int, _Aggregation] = {}
        self._cert_sent: dict[tuple[int, int], int] = {}              # (height, peer) -> when it may be sent it again
        self._cert_raw: dict[int, bytes] = {}                         # height -> our signed threshold-cert message
        self._cert_round = 0                                          # the peer asked in turn for certificates
        self.threshold_latency_ms: deque[int] = deque(maxlen=1024)   # commit to threshold cert, as aggregator
        self._out: list[Effect] = []
        self._decode = decoder or functools.partial(
            _decode_message, config.chain_id, config.validators, crypto, config.limits)
        reconfig.attach(self)

    # --- public API -------------------------------------------------------------------------------

    @classmethod
    def restore(cls, index: int, config: Config, signing_key: bytes, app: App, crypto: m.Crypto,
                now_ms: int, blocks: Iterable[tuple[bytes, bytes]],
                decoder: Callable[[bytes], Message] | None = None,
                votes: bytes | None = None, threshold_certs: Iterable[tuple[int, bytes]] = (),
                threshold_share: int | None = None, rng: Callable[[int], bytes] | None = None) -> "Replica":
        """Rebuild a replica from its persisted (block, certificate) pairs, replaying ``app``, its
        last ``SaveVotes`` record (None when it never saved one) and its persisted (height,
        threshold-certificate) pairs (each verified again).

        The replica comes back in the recorded view with the recorded prepared proof, and casts no
        vote (prepare, commit or proposal) at the height above its last block in that view or any
        lower one, where it may have voted before it stopped. ``app`` must be at the empty initial
        state. Raises ValueError if the store is inconsistent.
        """
        r = cls(index, config, signing_key, app, crypto, now_ms, decoder, threshold_share, rng)
        for block_bytes, cert_bytes in blocks:
            try:
                block = Block.decode(block_bytes)
                cert = CommitCertificate.from_obj(m.loads(cert_bytes))
                r._apply_certified(block.header, block.txs, cert, persist=False)
            except MessageError as exc:
                raise ValueError("corrupt block store: " + exc.reason) from exc
        for height, tcert_bytes in threshold_certs:
            try:                # one of an earlier validator set was checked with its group key when it came
                r._accept_threshold(height, ThresholdCertificate.decode(tcert_bytes), persist=False,
                                    verified=height < r._threshold_set_start())
            except MessageError as exc:
                raise ValueError("corrupt threshold certificate at %d: %s" % (height, exc.reason)) from exc
        if votes is not None:
            try:
                view, prepared, changing = r._parse_vote_record(votes)
            except MessageError as exc:
                raise ValueError("corrupt vote record: " + exc.reason) from exc
            r.view = view
            if prepared is not None:
                r.prepared_proof = prepared
            if changing:
                r._start_view_change(view)               # sent again by the first retransmission
                r.backoff = 0
            r.votes_saved = True
            r.abstain_height = r.height + 1
            r.abstain_view = view
        r._out = []
        return r

    @property
    def height(self) -> int:
        """Height of the last committed block (-1 before the first)."""
        return len(self.chain) - 1

    @property
    def last_hash(self) -> bytes:
        return self.chain[-1].hash if self.chain else m.ZERO_HASH

    def is_primary(self) -> bool:
        return self.member and self.config.primary(self.view) == self.index

    def block(self, height: int) -> tuple[Block, CommitCertificate]:
        s = self.chain[height]
        return s.block, s.cert

    def submit(self, tx: bytes, now_ms: int) -> list[Effect]:
        """A client transaction arriving at this validator."""
        return self.submit_many([tx], now_ms)

    def submit_many(self, txs: Sequence[bytes], now_ms: int) -> list[Effect]:
        """Client transactions arriving at this validator together: each is admitted or dropped
        (one ``Dropped`` per refused tx, in order); the admitted ones are forwarded to the other
        validators in signed requests of at most ``max_batch`` transactions."""
        self._begin(now_ms)
        admitted = []
        for tx in txs:
            reason = self._admit(tx, origin=True)
            if reason is not None:
                self._out.append(Dropped(reason, None, tx))
            else:
                admitted.append(tx)
        self._forward(admitted, None)
        if admitted:
            self._maybe_propose()
        return self._end()

    def _forward(self, txs: list[bytes], to: int | None) -> None:
        """Send ``txs`` in signed requests to validator ``to``, or to all (the primary first: its
        proposal waits for them; the backups need them only to check it, and to time it out)."""
        step = self.config.max_batch
        primary = self.config.primary(self.view)
        for i in range(0, len(txs), step):
            raw = self._sign([m.REQUEST, self.index, txs[i:i + step]])
            self._out.append(Broadcast(raw, primary) if to is None else Send(to, raw))

    def receive(self, sender_index: int, data: bytes, now_ms: int) -> list[Effect]:
        """A message from validator ``sender_index`` (as authenticated by the transport, if at all)."""
        self._begin(now_ms)
        if len(data) > self.config.max_message_size:
            self._drop("oversized", sender_index)
            return self._end()
        if len(data) <= MAX_PEEK:
            reason = self._refuse_unverified(sender_index, data)
            if reason is not None:
                self._drop(reason, sender_index)
                return self._end()
        elif data[:2] == EQUIVOCATION_PREFIX and not self._take_proof_token(sender_index):
            self._drop("equivocation rate", sender_index)
            return self._end()
        try:
            msg = self._decode(data)
            if msg.sender != sender_index:
                raise MessageError("sender mismatch")
            if msg.sender == self.index:
                raise MessageError("own message")
            self._dispatch(msg)
        except MessageError as exc:
            self._drop(exc.reason, sender_index)
        return self._end()

    def _take_proof_token(self, sender: int) -> bool:
        """An equivocation message costs three signature checks: a peer may send n at once (one per
        validator it convicts) and one a second after that."""
        cap = self.config.n
        tokens, at = self.proof_budget.get(sender, (cap, self.now))
        tokens = min(cap, tokens + (self.now - at) / 1000)
        if tokens < 1:
            self.proof_budget[sender] = (tokens, self.now)
            return False
        self.proof_budget[sender] = (tokens - 1, self.now)
        return True

    def _refuse_unverified(self, sender: int, data: bytes) -> str | None:
        """The reason to drop a small message before its signature is checked, or None (see
        the module docstring: fetch rate, and votes that would be dropped with nothing to note)."""
        try:
            a = m.loads(data)
        except MessageError:
            return None
        if not isinstance(a, list) or len(a) < 4 or a[1] != sender or type(a[0]) is not int:
            return None
        kind = a[0]
        if kind == m.FETCH_BLOCKS:
            tokens, at = self.fetch_budget.get(sender, (FETCH_REQUESTS_PER_S, self.now))
            tokens = min(FETCH_REQUESTS_PER_S, tokens + (self.now - at) * FETCH_REQUESTS_PER_S / 1000)
            if tokens < 1:
                self.fetch_budget[sender] = (tokens, self.now)
                return "fetch rate"
            self.fetch_budget[sender] = (tokens - 1, self.now)
            return None
        if kind not in (m.PREPARE, m.COMMIT) or len(a) != 6:
            return None
        view, h = a[2], a[3]
        if not m.is_uint(view) or not m.is_uint(h):
            return None
        if h - 1 > max(self.peer_heights.get(sender, -1), self.height) \
                or view > max(self.peer_views.get(sender, -1), self.view):
            return None                                  # news about the sender: verify and note it
        if h <= self.height:
            return "stale height"
        if h > self.height + 1 + self.config.lookahead:
            return "too far ahead"
        if view != self.view:
            if kind == m.COMMIT and h == self.height + 1:
                return None
            return "stale view" if view < self.view else "future view"
        slot = self.slots.get(h)
        if slot is None:
            return None
        prev = (slot.prepare_by if kind == m.PREPARE else slot.commit_by).get((view, sender))
        if prev is not None:
            return "duplicate" if prev == a[4] else "conflicting vote"
        if type(a[4]) is not bytes:
            return None
        # a quorum of verified votes for this very hash is logged: one more changes nothing (module docstring)
        if kind == m.PREPARE:
            if len(slot.prepares.get((view, a[4]), ())) >= 2 * self.config.f:
                return "prepared already"
        elif len(slot.commits.get((view, a[4]), ())) >= self.config.quorum:
            return "certified already"
        return None

    def tick(self, now_ms: int) -> list[Effect]:
        """Timers: batching, view-change timeouts, retransmission and block fetching."""
        self._begin(now_ms)
        self._maybe_propose()
        self._timers()
        self._threshold_timers()
        self._maybe_fetch()
        self._idle_sync()
        if self.now >= self.next_retransmit:
            self.next_retransmit = self.now + self.config.retransmit_ms
            self._retransmit()
            self._threshold_retransmit()
        return self._end()

    # --- plumbing ---------------------------------------------------------------------------------

    def _begin(self, now_ms: int) -> None:
        self.now = max(self.now, now_ms)
        self._out = []

    def _end(self) -> list[Effect]:
        out, self._out = self._out, []
        return out if self.member else reconfig.member_effects(self, out)

    def _drop(self, reason: str, sender: int | None = None) -> None:
        self._out.append(Dropped(reason, sender))

    def _sign(self, body: list) -> bytes:
        if not self.votes_saved and body[0] in _VOTES:
            self._save_votes()
        return m.encode_message(self.config.chain_id, body, self._key, self.crypto)

    def _broadcast(self, body: list) -> bytes:
        raw = self._sign(body)
        self._out.append(Broadcast(raw))
        return raw

    def _broadcast_sig(self, body: list) -> tuple[bytes, bytes]:
        if not self.votes_saved:
            self._save_votes()
        sig = self.crypto.sign(self._key, m.signed_bytes(self.config.chain_id, body))
        raw = m.dumps(list(body) + [sig])
        self._out.append(Broadcast(raw))
        return raw, sig

    def _may_vote(self, view: int, height: int) -> bool:
        """False where a restored replica may have voted before it stopped (see ``restore``)."""
        return self.member and (height != self.abstain_height or view > self.abstain_view)

    def _save_votes(self) -> None:
        """Emit the vote record: ``cbor([view, in-view-change: bool, prepared-proof / null])``."""
        prepared = None
        if self.prepared_proof is not None:
            p, votes = self.prepared_proof
            prepared = [p.raw, [[i, s] for i, s in sorted(votes.items())]]
        self.votes_saved = True
        self._out.append(SaveVotes(m.dumps([self.view, self.in_view_change, prepared])))

    def _parse_vote_record(self, data: bytes) -> tuple[int, tuple[_Proposal, dict[int, bytes]] | None, bool]:
        try:
            a = m.loads(data)
        except Exception:
            raise MessageError("malformed") from None
        if not isinstance(a, list) or len(a) != 3 or type(a[0]) is not int or not 0 <= a[0] <= m.MAX_VIEW \
                or not isinstance(a[1], bool):
            raise MessageError("malformed")
        view, changing = a[0], a[1]
        a = [view, a[2]]
        if a[1] is None:
            return view, None, changing
        if not isinstance(a[1], list) or len(a[1]) != 2 or not isinstance(a[1][1], list):
            raise MessageError("malformed")
        raw_pp = a[1][0]
        votes = []
        for v in a[1][1]:
            if not isinstance(v, list) or len(v) != 2 or type(v[0]) is not int or not isinstance(v[1], bytes):
                raise MessageError("malformed")
            votes.append((v[0], v[1]))
        if not isinstance(raw_pp, bytes):
            raise MessageError("malformed")
        if reconfig.below_chain(self, raw_pp):
            return view, None, changing          # a proof for a committed height (perhaps of an earlier set)
        proposal = self._check_prepared(raw_pp, votes, view + 1, -1)
        if proposal.header.height <= self.height:
            return view, None, changing
        if proposal.header.height != self.height + 1:
            raise MessageError("prepared proof above the next height")
        return view, (proposal, dict(votes)), changing

    def _slot(self, height: int) -> _Slot:
        s = self.slots.get(height)
        if s is None:
            s = self.slots[height] = _Slot()
        return s

    def _note_height(self, sender: int, height: int) -> None:
        if height > self.peer_heights.get(sender, -1):
            self.peer_heights[sender] = height

    def _note_view(self, sender: int, view: int) -> None:
        """Join the view that f+1 other replicas have reached (so at least one honest one)."""
        if view <= self.peer_views.get(sender, -1):
            return
        self.peer_views[sender] = view
        if view <= self.view:
            return
        views = sorted((v for i, v in self.peer_views.items() if i != self.index), reverse=True)
        f = self.config.f
        if len(views) > f and views[f] > self.view:
            self._start_view_change(views[f])

    def _dispatch(self, msg: Message) -> None:
        k = msg.kind
        if k == m.REQUEST:
            admitted = False
            for tx in msg.fields[0]:
                reason = self._admit(tx, origin=False)
                if reason is not None:
                    self._drop(reason, msg.sender)
                else:
                    admitted = True
            if admitted:
                self._maybe_propose()
        elif k == m.PRE_PREPARE:
            self._on_pre_prepare(msg)
        elif k in (m.PREPARE, m.COMMIT):
            self._on_vote(msg)
        elif k == m.CHECKPOINT:
            self._on_checkpoint(msg)
        elif k == m.VIEW_CHANGE:
            self._on_view_change(msg)
        elif k == m.NEW_VIEW:
            self._on_new_view(msg)
        elif k == m.FETCH_BLOCKS:
            self._on_fetch(msg)
        elif k == m.BLOCKS:
            self._on_blocks(msg)
        elif k == m.EQUIVOCATION:
            self._on_equivocation(msg)
        elif k == m.NONCE_COMMITMENT:
            self._on_nonce_commitment(msg)
        elif k == m.SIGN_REQUEST:
            self._on_sign_request(msg)
        elif k == m.SIGNATURE_SHARE:
            self._on_signature_share(msg)
        elif k == m.THRESHOLD_CERT:
            self._on_threshold_cert(msg)

    # --- requests ---------------------------------------------------------------------------------

    def _admit(self, tx: bytes, origin: bool) -> str | None:
        if not isinstance(tx, bytes) or len(tx) > self.config.max_tx_size:
            return "oversized tx"
        h = _txhash(tx)
        if h in self.committed_txs:
            return "replayed tx"
        if h in self.pool:
            return "duplicate tx"
        if len(self.pool) >= self.config.max_pool:
            return "pool full"
        if origin:
            code = self.app.check_tx(tx)
        elif h in self.proposal_checked:   # passed check_tx (a superset of precheck_tx) in a proposal at this height
            code = None
        else:
            code = self.app.precheck_tx(tx)
        if code is not None:
            return "invalid tx %d" % code
        self.pool[h] = (tx, self.now, origin)
        if self.waiting_since is None:
            self.waiting_since = self.now
        return None

    # --- normal case ------------------------------------------------------------------------------

    def _maybe_propose(self) -> None:
        if not self.is_primary() or self.in_view_change or not self.pool:
            return
        h = self.height + 1
        if self.certified_height > self.height:
            return
        slot = self._slot(h)
        if self.view in slot.proposals or not self._may_vote(self.view, h):
            return
        oldest = next(iter(self.pool.values()))[1]
        if len(self.pool) < self.config.max_batch and self.now - oldest < self.config.batch_timeout_ms:
            return
        batch = list(itertools.islice(self.pool.items(), self.config.max_batch))
        txs = tuple(entry[0] for _, entry in batch)
        prev_time = self.chain[-1].block.header.time_ms if self.chain else -1
        time_ms = max(self.now, prev_time + 1)
        self._rollback()
        state_root = self.app.execute(h, time_ms, txs)
        header = Header(self.config.chain_id, h, self.last_hash, time_ms, m.tx_root(txs),
                        state_root, self._vhash)
        hh = header.hash()
        self.executed = hh
        raw = self._broadcast([m.PRE_PREPARE, self.index, self.view, h, header.to_obj(), list(txs)])
        slot.proposals[self.view] = _Proposal(self.view, header, txs, hh, raw, tuple(th for th, _ in batch))
        self.progress_deadline = None
        self._progress(h)

    def _rollback(self) -> None:
        if self.executed is not None:
            self.app.rollback()
            self.executed = None

    def _check_header(self, header: Header, txs: Sequence[bytes], proposal: bool) -> tuple[bytes, ...] | None:
        """Raise MessageError unless ``header`` can follow the last committed block; for a proposal,
        return the hashes of its transactions."""
        h = self.height + 1
        if header.chain_id != self.config.chain_id or header.height != h:
            raise MessageError("header mismatch")
        if header.prev_hash != self.last_hash or header.validators_hash != self._vhash:
            raise MessageError("header mismatch")
        if header.tx_root != m.tx_root(txs):
            raise MessageError("header mismatch")
        if not proposal:
            return None
        if self.chain and header.time_ms <= self.chain[-1].block.header.time_ms:
            raise MessageError("bad time")
        if header.time_ms > self.now + self.config.max_clock_skew_ms:
            raise MessageError("bad time")
        if not txs or len(txs) > self.config.max_batch:
            raise MessageError("bad batch")
        seen: set[bytes] = set()
        hashes = []
        for tx in txs:
            th = _txhash(tx)
            if th in seen:
                raise MessageError("duplicate tx in batch")
            if th in self.committed_txs:
                raise MessageError("replayed tx in batch")
            seen.add(th)
            hashes.append(th)
            if th not in self.pool and self.app.check_tx(tx) is not None:
                raise MessageError("invalid tx in batch")
        return tuple(hashes)

    def _execute(self, header: Header, txs: Sequence[bytes], hh: bytes) -> None:
        """Make the app's speculative state the result of ``txs`` and check the state root."""
        if self.executed == hh:
            return
        self._rollback()
        root = self.app.execute(header.height, header.time_ms, txs)
        if root != header.state_root:
            self.app.rollback()
            raise MessageError("state root mismatch")
        self.executed = hh

    def _on_pre_prepare(self, msg: Message) -> None:
        view, h, header, txs = msg.fields
        self._note_height(msg.sender, h - 1)
        if msg.sender != self.config.primary(view):
            raise MessageError("not primary")
        self._note_view(msg.sender, view)
        if view != self.view:
            raise MessageError("stale view" if view < self.view else "future view")
        if h <= self.height:
            if h == self.height > self.stable_checkpoint and header.hash() == self.last_hash:
                self._help_commit(view, h, self.last_hash)
                return
            raise MessageError("stale height")
        if h > self.height + 1 + self.config.lookahead:
            raise MessageError("too far ahead")
        if header.height != h:
            raise MessageError("header mismatch")
        slot = self._slot(h)
        hh = header.hash()
        old = slot.proposals.get(view)
        if old is not None:
            if old.hash == hh:
                raise MessageError("duplicate")
            self._convict(msg.sender, old.raw, msg.raw)
            raise MessageError("equivocation")
        slot.proposals[view] = _Proposal(view, header, txs, hh, msg.raw)
        self._progress(self.height + 1)

    def _convict(self, culprit: int, raw_a: bytes, raw_b: bytes) -> None:
        """``culprit`` signed both pre-prepares (one view and height, different headers): send the
        pair to every other validator and leave any view it leads, now and later."""
        if culprit in self.convicted:
            return
        self.convicted[culprit] = self._broadcast([m.EQUIVOCATION, self.index, raw_a, raw_b])
        if self.config.primary(self.view) == culprit:
            self._start_view_change(self.view + 1)

    def _on_equivocation(self, msg: Message) -> None:
        """A peer's proof that a primary equivocated (see ``_convict``)."""
        raw_a, raw_b = msg.fields
        head = m.loads(raw_a)
        if isinstance(head, list) and len(head) > 1 and type(head[1]) is int and head[1] in self.convicted:
            raise MessageError("duplicate")                  # before the signature checks
        a, b = self._decode(raw_a), self._decode(raw_b)
        if a.kind != m.PRE_PREPARE or b.kind != m.PRE_PREPARE or a.sender != b.sender \
                or a.sender != self.config.primary(a.fields[0]) or a.fields[:2] != b.fields[:2] \
                or a.fields[2].hash() == b.fields[2].hash():
            raise MessageError("bad equivocation proof")
        self._convict(a.sender, raw_a, raw_b)

    def _help_commit(self, view: int, h: int, hh: bytes) -> None:
        """Vote for a re-proposal of our own last committed block so that others can commit it."""
        slot = self._slot(h)
        if not self.is_primary() and view not in slot.my_prepare:
            slot.my_prepare[view] = self._broadcast([m.PREPARE, self.index, view, h, hh])
        if view not in slot.my_commit:
            slot.my_commit[view] = self._broadcast([m.COMMIT, self.index, view, h, hh])

    def _on_vote(self, msg: Message) -> None:
        view, h, hh = msg.fields
        self._note_height(msg.sender, h - 1)
        self._note_view(msg.sender, view)
        if h <= self.height:
            raise MessageError("stale height")
        if h > self.height + 1 + self.config.lookahead:
            raise MessageError("too far ahead")
        if view != self.view:
            if msg.kind == m.COMMIT and h == self.height + 1:
                self._other_view_commit(msg)
                return
            raise MessageError("stale view" if view < self.view else "future view")
        if msg.kind == m.PREPARE and msg.sender == self.config.primary(view):
            raise MessageError("prepare from primary")
        slot = self._slot(h)
        by, votes = ((slot.prepare_by, slot.prepares) if msg.kind == m.PREPARE
                     else (slot.commit_by, slot.commits))
        prev = by.get((view, msg.sender))
        if prev is not None:
            raise MessageError("duplicate" if prev == hh else "conflicting vote")
        by[(view, msg.sender)] = hh
        votes.setdefault((view, hh), {})[msg.sender] = msg.sig
        self._progress(self.height + 1)

    def _other_view_commit(self, msg: Message) -> None:
        """Keep a commit of another view at height + 1 as certificate evidence (latest per sender)."""
        view, h, hh = msg.fields
        slot = self._slot(h)
        prev = slot.other_commits.get(msg.sender)
        if prev is not None and prev[0] >= view:
            raise MessageError("duplicate" if prev[:2] == (view, hh) else "stale view")
        slot.other_commits[msg.sender] = (view, hh, msg.sig)
        votes = {i: sig for i, (v, x, sig) in slot.other_commits.items() if v == view and x == hh}
        if len(votes) < self.config.quorum:
            return
        cert = CommitCertificate(h, view, hh, tuple(sorted(votes.items())[: self.config.quorum]))
        p = slot.proposals.get(view)
        if p is not None and p.hash == hh:
            try:
                self._apply_certified(p.header, p.txs, cert, persist=True)
            except MessageError as exc:
                self._drop(exc.reason, msg.sender)
                return
            self._progress(self.height + 1)
            self._maybe_propose()
        else:
            self._note_certified(msg.sender, h)
            self.next_fetch = 0
            self._maybe_fetch()

    def _progress(self, h: int) -> None:
        """Advance the slot at height h = height + 1 as far as the log allows."""
        while True:
            if h != self.height + 1 or self.in_view_change:
                return
            slot = self.slots.get(h)
            if slot is None:
                return
            p = slot.proposals.get(self.view)
            usable = p is not None and self.view not in slot.rejected
            if self._fetch_if_certified(slot, h, p.hash if usable else None) or not usable:
                return
            if self.executed != p.hash:
                try:
                    p.tx_hashes = self._check_header(p.header, p.txs, proposal=True)
                    self._execute(p.header, p.txs, p.hash)
                except MessageError as exc:
                    slot.rejected.add(self.view)
                    self._drop("rejected proposal: " + exc.reason, self.config.primary(self.view))
                    return
                self.proposal_checked.update(p.tx_hashes)
                self.progress_deadline = None      # a valid proposal for the next height is progress
                if self.proposed_at is None:
                    self.proposed_at = self.now
            primary = self.config.primary(self.view)
            voting = self._may_vote(self.view, h)
            if voting and self.index != primary and self.view not in slot.my_prepare:
                raw, sig = self._broadcast_sig([m.PREPARE, self.index, self.view, h, p.hash])
                slot.my_prepare[self.view] = raw
                slot.prepare_by[(self.view, self.index)] = p.hash
                slot.prepares.setdefault((self.view, p.hash), {})[self.index] = sig
            prepares = slot.prepares.get((self.view, p.hash), {})
            if len(prepares) - (primary in prepares) < 2 * self.config.f:     # O(1): runs on every vote
                return
            if voting and self.view not in slot.my_commit:
                if self.prepared_proof is None or self.prepared_proof[0].view != self.view \
                        or self.prepared_proof[0].header.height != h:
                    self.prepared_proof = (p, {i: s for i, s in prepares.items() if i != primary})
                    self._save_votes()
                raw, sig = self._broadcast_sig([m.COMMIT, self.index, self.view, h, p.hash])
                slot.my_commit[self.view] = raw
                slot.commit_by[(self.view, self.index)] = p.hash
                slot.commits.setdefault((self.view, p.hash), {})[self.index] = sig
                self._offer_commitment(h)
            commits = slot.commits.get((self.view, p.hash), {})
            if len(commits) < self.config.quorum:
                return
            votes = tuple(sorted(commits.items())[: self.config.quorum])
            cert = CommitCertificate(h, self.view, p.hash, votes)
            served = self._served()
            self._commit(p.header, p.txs, cert, persist=True, hashes=p.tx_hashes)
            h = self.height + 1
            if served and self._primary_too_slow():
                self.slow_primary_demands += 1
                self.slow_suspects.add(self.config.primary(self.view))
                self._start_view_change(self.view + 1)
                return
            self._maybe_propose()

    def _served(self) -> bool:
        """Record the (d, p) sample of the block about to commit in this view (see the module
        docstring); True when one was recorded."""
        if self.is_primary() or self.proposed_at is None:
            return False
        ready = self.waiting_since
        d = self.proposed_at - ready if ready is not None and ready < self.proposed_at else 0
        self.service.append((d, self.now - self.proposed_at))
        return True

    def _primary_too_slow(self) -> bool:
        """The slow-primary rule of the module docstring over the samples of this view (and over the
        last block alone for a suspect primary or a wait near the timeout)."""
        cfg = self.config
        grace = cfg.batch_timeout_ms + cfg.slow_primary_grace_ms
        service = self.service
        primary = cfg.primary(self.view)

        def slow(samples: Iterable[tuple[int, int]]) -> bool:
            samples = list(samples)
            return sum(d for d, _ in samples) > (SLOW_PRIMARY_FRACTION - 1) * sum(p + grace for _, p in samples)

        d, p = service[-1]
        if (d - p - grace) * SLOW_PRIMARY_ALONE >= cfg.view_change_timeout_ms:
            return True
        if primary in self.slow_suspects and slow([service[-1]]):
            return True
        while len(service) > SLOW_PRIMARY_MIN_BLOCKS \
                and sum(d + p for d, p in itertools.islice(service, 1, None)) >= cfg.slow_primary_window_ms:
            service.popleft()
        if len(service) < SLOW_PRIMARY_MIN_BLOCKS or sum(d + p for d, p in service) < cfg.slow_primary_window_ms:
            return False
        if slow(service):
            return True
        self.slow_suspects.discard(primary)               # a full window within the bound clears it
        return False

    def _fetch_if_certified(self, slot: _Slot, h: int, have: bytes | None) -> bool:
        """2f+1 commits of this view at h for a header other than ``have`` (the valid proposal held,
        if any): the block is certified elsewhere, so fetch it instead of waiting for new traffic."""
        for (view, hh), votes in slot.commits.items():
            if view != self.view or hh == have or len(votes) < self.config.quorum:
                continue
            fresh = h > self.certified_height
            for i in votes:
                if i != self.index:
                    self._note_certified(i, h)
            if fresh:
                self.next_fetch = 0
            self._maybe_fetch()
            return True
        return False

    def _commit(self, header: Header, txs: tuple[bytes, ...], cert: CommitCertificate,
                persist: bool, hashes: tuple[bytes, ...] | None = None) -> None:
        h = header.height
        self.app.commit(h)
        self.executed = None
        block = Block(header, txs)
        self.chain.append(_Stored(block, cert, cert.header_hash))
        if hashes is None or len(hashes) != len(txs):
            hashes = tuple(_txhash(tx) for tx in txs)
        self.committed_txs.update(hashes)
        pool = self.pool
        for th in hashes:
            pool.pop(th, None)
        self.committed_hashes = (h, hashes)
        self.proposal_checked.clear()
        if self.prepared_proof is not None and self.prepared_proof[0].header.height <= h:
            self.prepared_proof = None
        self.progress_deadline = None
        self.backoff = 0
        self.committed_at = self.now
        self.proposed_at = None
        self.waiting_since = self.now if self.pool else None
        if h > self.certified_height:
            self.certified_height = h
        if persist:
            self._out.append(Persist(h, block.encode(), cert.encode()))
            self._out.append(Committed(h, header, cert, txs))
        self._threshold_committed(h, persist)
        if (h + 1) % self.config.checkpoint_interval == 0:
            self._broadcast([m.CHECKPOINT, self.index, h, cert.header_hash])
            self._add_checkpoint(self.index, h, cert.header_hash)
        reconfig.after_commit(self, h, persist)

    # --- checkpoints ------------------------------------------------------------------------------

    def _on_checkpoint(self, msg: Message) -> None:
        h, hh = msg.fields
        self._note_height(msg.sender, h)
        if h <= self.stable_checkpoint:
            raise MessageError("stale checkpoint")
        if (h + 1) % self.config.checkpoint_interval != 0:
            raise MessageError("not a checkpoint height")
        if h > self.height + self.config.lookahead * self.config.checkpoint_interval:
            raise MessageError("too far ahead")
        if any(msg.sender in s for s in self.checkpoints.get(h, {}).values()):
            raise MessageError("duplicate")
        self._add_checkpoint(msg.sender, h, hh)

    def _add_checkpoint(self, sender: int, h: int, hh: bytes) -> None:
        self.checkpoints.setdefault(h, {}).setdefault(hh, set()).add(sender)
        self._try_stabilize()

    def _try_stabilize(self) -> None:
        for h in sorted(self.checkpoints):
            if h <= self.stable_checkpoint or h > self.height:
                continue
            votes = self.checkpoints[h].get(self.chain[h].hash, set())
            if len(votes) >= self.config.quorum:
                self._truncate(h)

    def _truncate(self, h: int) -> None:
        """Stable checkpoint at h: discard the message log at or below it."""
        self.stable_checkpoint = h
        for k in [k for k in self.slots if k <= h]:
            del self.slots[k]
        for k in [k for k in self.checkpoints if k <= h]:
            del self.checkpoints[k]

    # --- view change ------------------------------------------------------------------------------

    def _timeout(self) -> int:
        return self.config.view_change_timeout_ms << min(self.backoff, self.config.max_backoff_exp)

    def _has_work(self) -> bool:
        if self.pool:
            return True
        slot = self.slots.get(self.height + 1)
        return slot is not None and self.view in slot.proposals

    def _timers(self) -> None:
        if not self.member or reconfig.switch_view_change(self):
            return
        if self.in_view_change:
            if self.vc_deadline is None:
                if len(self.view_changes.get(self.view, ())) >= self.config.quorum:
                    self.vc_deadline = self.now + self._timeout()
            elif self.now >= self.vc_deadline:
                self._start_view_change(self.view + 1)
            return
        if not self._has_work():
            self.progress_deadline = None
            return
        if self.progress_deadline is None:
            self.progress_deadline = self.now + self._timeout()
        elif self.now >= self.progress_deadline:
            self._start_view_change(self.view + 1)

    def _start_view_change(self, view: int) -> None:
        if not self.member:
            return
        while self.config.primary(view) in self.convicted and len(self.convicted) < self.config.n:
            view += 1
        if view > m.MAX_VIEW:
            return
        self.view = view
        self.in_view_change = True
        self.progress_deadline = None
        self.vc_deadline = None
        self.service.clear()
        self.backoff += 1
        self.view_changes = {v: d for v, d in self.view_changes.items() if v >= view}
        self._save_votes()
        committed = None
        if self.chain:
            last = self.chain[-1]
            committed = [last.block.header.to_obj(), last.cert.to_obj()]
        prepared = None
        if self.prepared_proof is not None and self.prepared_proof[0].header.height == self.height + 1:
            p, votes = self.prepared_proof
            prepared = [p.raw, [[i, s] for i, s in sorted(votes.items())]]
        raw = self._broadcast([m.VIEW_CHANGE, self.index, view, committed, prepared])
        self.my_view_change = raw
        self.view_changes.setdefault(view, {})[self.index] = self._parse_view_change(
            self._decode(raw))
        self._try_new_view()

    def _parse_view_change(self, msg: Message) -> _ViewChange:
        """Verify the committed certificate and prepared proof of a view-change."""
        view, committed, prepared = msg.fields
        cfg = self.config
        ch = -1
        if committed is not None:
            header, cert = committed
            keys, vhash = reconfig.validators_at(self, header.height)
            if header.validators_hash != vhash:
                raise MessageError("bad view-change")
            m.verify_certificate(cert, header, cfg.chain_id, keys, self.crypto)
            ch = header.height
        proposal = None
        if prepared is not None:
            raw_pp, votes = prepared
            proposal = self._check_prepared(raw_pp, votes, view, ch)
            if proposal.header.height != ch + 1:
                raise MessageError("bad view-change")
        return _ViewChange(view, msg.sender, committed, proposal, msg.raw)

    def _check_prepared(self, raw_pp: bytes, votes: Iterable[tuple[int, bytes]], view: int,
                        committed: int) -> _Proposal:
        """The proposal of a prepared proof (a pre-prepare of a view below ``view`` above height
        ``committed``, and 2f valid prepares from distinct backups); MessageError otherwise."""
        cfg = self.config
        pp = self._decode(raw_pp)
        if pp.kind != m.PRE_PREPARE:
            raise MessageError("bad view-change")
        pview, ph, pheader, ptxs = pp.fields
        if pp.sender != cfg.primary(pview) or pview >= view or ph <= committed or pheader.height != ph:
            raise MessageError("bad view-change")
        hh = pheader.hash()
        primary = cfg.primary(pview)
        seen: set[int] = set()
        for i, sig in votes:
            if i >= cfg.n or i == primary or i in seen:
                raise MessageError("bad view-change")
            body = [m.PREPARE, i, pview, ph, hh]
            if not self.crypto.verify(cfg.validators[i], m.signed_bytes(cfg.chain_id, body), sig):
                raise MessageError("bad view-change")
            seen.add(i)
        if len(seen) < 2 * cfg.f:
            raise MessageError("bad view-change")
        return _Proposal(pview, pheader, ptxs, hh, raw_pp)

    def _push_blocks(self, to: int, committed: tuple[Header, CommitCertificate] | None) -> None:
        """Send blocks to a replica whose view-change shows it below our height (rate-limited)."""
        theirs = committed[0].height if committed is not None else -1
        if theirs >= self.height or self.pushed_to.get(to, -1) > self.now:
            return
        self.pushed_to[to] = self.now + self.config.retransmit_ms
        try:
            self._send_blocks(to, theirs + 1, self.height)
        except MessageError as exc:                  # the view-change itself is still processed
            self._drop(exc.reason, to)

    def _on_view_change(self, msg: Message) -> None:
        view = msg.fields[0]
        self._push_blocks(msg.sender, msg.fields[1])
        if view < self.view or (view == self.view and not self.in_view_change):
            if self.new_view_raw is not None and self.nv_sent_to.get(msg.sender, -1) < self.now:
                self.nv_sent_to[msg.sender] = self.now + self.config.retransmit_ms
                self._out.append(Send(msg.sender, self.new_view_raw))
            raise MessageError("stale view")
        if msg.sender in self.view_changes.get(view, {}):
            raise MessageError("duplicate")
        vc = self._parse_view_change(msg)
        mine = sorted(v for v, d in self.view_changes.items() if msg.sender in d)
        if len(mine) >= 3:
            if mine[0] > view:
                raise MessageError("stale view")
            del self.view_changes[mine[0]][msg.sender]
        self.view_changes.setdefault(view, {})[msg.sender] = vc
        if vc.committed is not None:
            self._note_certified(msg.sender, vc.committed[0].height)
        self._note_view(msg.sender, view)
        self._try_new_view()

    def _select(self, vcs: Sequence[_ViewChange]) -> tuple[int, _Proposal | None]:
        """Highest certified height H and the highest-view proposal prepared at H+1, if any."""
        top = max((vc.committed[0].height for vc in vcs if vc.committed is not None), default=-1)
        best: _Proposal | None = None
        for vc in vcs:
            p = vc.prepared
            if p is None or p.header.height != top + 1:
                continue
            if best is None or (p.view, p.hash) > (best.view, best.hash):
                best = p
        return top, best

    def _try_new_view(self) -> None:
        if not self.in_view_change or not self.is_primary():
            return
        vcs = sorted(self.view_changes.get(self.view, {}).values(), key=lambda vc: vc.sender)
        if len(vcs) < self.config.quorum:
            return
        vcs = vcs[: self.config.quorum]
        top, chosen = self._select(vcs)
        pp_raw = None
        if chosen is not None:
            pp_raw = self._sign([m.PRE_PREPARE, self.index, self.view, top + 1,
                                 chosen.header.to_obj(), list(chosen.txs)])
        raw = self._broadcast([m.NEW_VIEW, self.index, self.view, [vc.raw for vc in vcs], pp_raw])
        self._enter_view(self.view, raw, vcs, top, chosen, pp_raw)

    def _on_new_view(self, msg: Message) -> None:
        view, raw_vcs, raw_pp = msg.fields
        cfg = self.config
        if view < self.view or (view == self.view and not self.in_view_change):
            raise MessageError("stale view")
        if msg.sender != cfg.primary(view):
            raise MessageError("not primary")
        vcs: list[_ViewChange] = []
        senders: set[int] = set()
        for raw in raw_vcs:
            vm = self._decode(raw)
            if vm.kind != m.VIEW_CHANGE or vm.fields[0] != view or vm.sender in senders:
                raise MessageError("bad new-view")
            vcs.append(self._parse_view_change(vm))
            senders.add(vm.sender)
        if len(vcs) < cfg.quorum:
            raise MessageError("bad new-view")
        top, chosen = self._select(vcs)
        if raw_pp is not None:
            pp = self._decode(raw_pp)
            if pp.kind != m.PRE_PREPARE:
                raise MessageError("bad new-view")
            pview, ph, pheader, ptxs = pp.fields
            if pp.sender != msg.sender or pview != view or ph != top + 1:
                raise MessageError("bad new-view")
            if chosen is not None and (pheader.hash() != chosen.hash or ptxs != chosen.txs):
                raise MessageError("bad new-view")
        elif chosen is not None:
            raise MessageError("bad new-view")
        for vc in vcs:
            if vc.committed is not None:
                self._note_certified(vc.sender, vc.committed[0].height)
        self._enter_view(view, msg.raw, vcs, top, chosen, raw_pp)

    def _enter_view(self, view: int, raw: bytes, vcs: Sequence[_ViewChange], top: int,
                    chosen: _Proposal | None, raw_pp: bytes | None) -> None:
        self.view = view
        self.in_view_change = False
        self._reforward = {}
        self.service.clear()
        self.proposed_at = None
        self.waiting_since = self.now if self.pool else None
        self._save_votes()
        self.new_view_raw = raw
        self.vc_deadline = None
        self.progress_deadline = None
        self.view_changes = {v: d for v, d in self.view_changes.items() if v > view}
        if raw_pp is not None:
            pp = self._decode(raw_pp)
            _, h, header, txs = pp.fields
            if h == self.height > self.stable_checkpoint and header.hash() == self.last_hash:
                self._help_commit(view, h, self.last_hash)
            elif self.height < h <= self.height + 1 + self.config.lookahead:
                slot = self._slot(h)
                slot.proposals[view] = _Proposal(view, header, txs, header.hash(), raw_pp)
        if self.config.primary(view) in self.convicted:
            self._start_view_change(view + 1)
            return
        self._threshold_new_view()
        self._progress(self.height + 1)
        self._maybe_propose()

    # --- state transfer ---------------------------------------------------------------------------

    def _note_certified(self, sender: int, h: int) -> None:
        self._note_height(sender, h)
        if h > self.certified_height:
            self.certified_height = h

    def _fetch_target(self) -> int:
        claims = sorted(self.peer_heights.values(), reverse=True)
        f = self.config.f
        target = claims[f] if len(claims) > f else -1
        return max(target, self.certified_height)

    def _maybe_fetch(self) -> None:
        target = self._fetch_target()
        if target <= self.height or self.now < self.next_fetch:
            return
        peers = sorted(i for i, h in self.peer_heights.items() if h > self.height and i != self.index)
        if not peers:
            return
        self.fetch_round += 1
        peer = peers[self.fetch_round % len(peers)]
        self.next_fetch = self.now + self.config.retransmit_ms
        hi = min(target, self.height + self.config.max_blocks_per_reply)
        self._out.append(Send(peer, self._sign([m.FETCH_BLOCKS, self.index, self.height + 1, hi])))

    def _idle_sync(self) -> None:
        """With no work of its own, ask one peer in turn every ``idle_sync_ms`` for blocks above our height:
        a replica that missed the last blocks' votes (restarted, partitioned) catches up while no new
        traffic would show it that it is behind."""
        if self.now < self.next_sync:
            return
        self.next_sync = self.now + self.config.idle_sync_ms
        if self.in_view_change or self._has_work():
            return
        peers = [i for i in range(self.config.n) if i != self.index]
        if not peers:                   # a single validator has nobody to be behind
            return
        self.fetch_round += 1
        peer = peers[self.fetch_round % len(peers)]
        self._out.append(Send(peer, self._sign([m.FETCH_BLOCKS, self.index, self.height + 1,
                                                self.height + self.config.max_blocks_per_reply])))

    def _on_fetch(self, msg: Message) -> None:
        lo, hi = msg.fields
        if lo == self.height + 1 <= hi:
            return                      # a peer as far as we are (``_idle_sync``): nothing to send, nothing wrong
        if lo > min(hi, self.height):
            raise MessageError("nothing to send")
        self._send_blocks(msg.sender, lo, hi)

    def _send_blocks(self, to: int, lo: int, hi: int) -> None:
        cap = self.config.max_message_size
        tokens, at = self.send_budget.get(to, (cap // 2, self.now))
        tokens = min(cap // 2, tokens + (self.now - at) * cap // (1000 * SEND_BUDGET_DIV))
        if tokens < 0:
            self.send_budget[to] = (tokens, self.now)
            raise MessageError("fetch rate")
        hi = min(hi, self.height, lo + self.config.max_blocks_per_reply - 1)
        items = []
        size = 0
        for h in range(lo, hi + 1):
            s = self.chain[h]
            item = [s.block.header.to_obj(), list(s.block.txs), s.cert.to_obj()]
            tcert = self.threshold_certs.get(h)
            if tcert is not None:
                item.append(tcert.to_obj())
            size += len(s.block.encode()) + 80 * len(s.cert.votes) + 64
            if items and size > self.config.max_message_size // 2:
                break
            items.append(item)
        self.send_budget[to] = (tokens - max(size, cap // FETCH_MIN_COST_DIV), self.now)
        self._out.append(Send(to, self._sign([m.BLOCKS, self.index, items])))

    def _on_blocks(self, msg: Message) -> None:
        (items,) = msg.fields
        applied = 0
        error = None
        for header, txs, cert, tcert in items:
            if header.height <= self.height and tcert is not None and header.height not in self.threshold_certs \
                    and header.hash() == self.chain[header.height].hash:
                try:                                  # a block we have, with the certificate we lack
                    self._accept_threshold(header.height, tcert, persist=True)
                except MessageError as exc:
                    self._drop(exc.reason, msg.sender)
            if header.height != self.height + 1:
                continue
            try:
                self._apply_certified(header, txs, cert, persist=True)
            except MessageError as exc:
                error = exc
                break
            applied += 1
            if tcert is not None and header.height not in self.threshold_certs:
                try:
                    self._accept_threshold(header.height, tcert, persist=True)
                except MessageError as exc:           # the block stands on its commit certificate
                    self._drop(exc.reason, msg.sender)
        if applied == 0:
            raise error or MessageError("no usable blocks")
        if error is not None:
            self._drop(error.reason, msg.sender)
        self._note_height(msg.sender, self.height)
        self.next_fetch = 0
        self._try_stabilize()
        self._progress(self.height + 1)
        self._maybe_fetch()

    def _apply_certified(self, header: Header, txs: tuple[bytes, ...], cert: CommitCertificate,
                         persist: bool) -> None:
        cfg = self.config
        self._check_header(header, txs, proposal=False)
        m.verify_certificate(cert, header, cfg.chain_id, cfg.validators, self.crypto)
        self._execute(header, txs, cert.header_hash)
        self._commit(header, txs, cert, persist)

    # --- retransmission ---------------------------------------------------------------------------

    def _retransmit(self) -> None:
        if self.in_view_change:
            if self.my_view_change is not None:
                self._out.append(Broadcast(self.my_view_change))
            return
        slot = self.slots.get(self.height + 1)
        if slot is not None:
            p = slot.proposals.get(self.view)
            if p is not None and self.is_primary():
                self._out.append(Broadcast(p.raw))
            for raw in (slot.my_prepare.get(self.view), slot.my_commit.get(self.view)):
                if raw is not None:
                    self._out.append(Broadcast(raw))
        last = self.slots.get(self.height)
        if last is not None and self.now - self.committed_at <= 4 * self.config.retransmit_ms:
            raw = last.my_commit.get(self.view)
            if raw is not None:
                self._out.append(Broadcast(raw))
        primary = self.config.primary(self.view)
        if primary != self.index:
            step0 = self.config.retransmit_ms
            again = self._reforward
            if len(again) > 2 * len(self.pool) + 64:
                again = self._reforward = {h: v for h, v in again.items() if h in self.pool}
            late = []
            now = self.now
            for h, entry in self.pool.items():
                if not entry[2]:
                    continue
                got = again.get(h)
                if got is None:
                    due, step = entry[1] + step0, step0
                else:
                    due, step = got
                if now >= due:
                    late.append(entry[0])
                    step = min(2 * step, step0 << MAX_REFORWARD_EXP)
                    again[h] = (now + step, step)
                    if len(late) >= self.config.max_batch:
                        break
            self._forward(late, primary)

    # --- threshold certificates -------------------------------------------------------------------
    # After commit the primary (aggregator) asks t = 2f+1 replicas whose round-one commitments it holds
    # for FROST shares over the block's commit bytes, aggregates them and broadcasts the certificate.
    # A replica signs only a header it committed, with nonces it made for that height and uses once.

    def _threshold_set_start(self) -> int:
        """The first height of the validator set in force (its group key signs from there)."""
        history = getattr(self, "set_history", None)
        return history[-1][0] if history else 0

    def _pending_threshold(self) -> list[int]:
        """Committed heights of the set in force, in the window, without a threshold certificate, oldest first."""
        low = max(0, self.height - THRESHOLD_WINDOW + 1, self._threshold_set_start())
        return [h for h in range(low, self.height + 1) if h not in self.threshold_certs]

    def _commit_bytes(self, height: int, view: int) -> bytes:
        return m.commit_sign_bytes(self.config.chain_id, height, view, self.chain[height].hash)

    def _held_nonces(self, height: int, aggregator: int) -> list:
        """[nonces, commitment, signed nonce-commitment, view it was last offered in] for ``height``,
        offered to ``aggregator`` alone (so two aggregators never spend one commitment), made now if
        none are held. Never sent or stored."""
        per_height = self._nonces.setdefault(height, {})
        held = per_height.get(aggregator)
        if held is None:
            nonces, commitment = frost.commit(self._threshold_share, self._rng, self.index + 1)
            raw = self._sign([m.NONCE_COMMITMENT, self.index, height, commitment])
            held = per_height[aggregator] = [nonces, commitment, raw, -1]
        return held

    def _offer_commitment(self, height: int, again: bool = False) -> None:
        """Give the aggregator (primary of this view) a commitment for ``height``, once per view unless
        ``again``."""
        if self._threshold_share is None or height in self.threshold_certs:
            return
        held = self._held_nonces(height, self.config.primary(self.view))
        if held[3] == self.view and not again:
            return
        held[3] = self.view
        if self.is_primary():
            self._aggregation(height).commitments[self.index] = held[1]
            self._try_aggregate(height)
        else:
            self._out.append(Send(self.config.primary(self.view), held[2]))

    def _aggregation(self, height: int) -> _Aggregation:
        agg = self._aggregations.get(height)
        if agg is None:
            agg = self._aggregations[height] = _Aggregation()
        return agg

    def _threshold_committed(self, height: int, live: bool) -> None:
        """Block ``height`` committed: take a certificate that came early, forget what fell out of the
        window, and (``live``) start or join its aggregation."""
        early = self._early_certs.pop(height, None)
        if early is not None:
            for tcert in early.values():
                try:
                    self._accept_threshold(height, tcert, persist=live)
                    break
                except MessageError:
                    continue
        if height % 16 == 0:
            low = height - THRESHOLD_WINDOW
            for table in (self._nonces, self._aggregations, self._shares_made, self._cert_raw):
                for k in [k for k in table if k <= low]:
                    del table[k]
            for k in [k for k in self._cert_sent if k[0] <= low]:
                del self._cert_sent[k]
            for k in [k for k in self._early_certs if k <= height]:
                del self._early_certs[k]
        if not live or self.config.group_key is None or height in self.threshold_certs:
            return
        self._aggregation(height).committed_at = self.now
        self._offer_commitment(height)
        self._try_aggregate(height)

    def _on_nonce_commitment(self, msg: Message) -> None:
        height, commitment = msg.fields
        cfg = self.config
        if cfg.group_key is None:
            raise MessageError("no group key")
        if commitment[0] != msg.sender + 1:
            raise MessageError("bad commitment")
        if height in self.threshold_certs:
            self._send_threshold(height, msg.sender)
            return
        if height <= self.height - THRESHOLD_WINDOW:
            raise MessageError("stale height")
        if height > self.height + 1 + cfg.lookahead:
            raise MessageError("too far ahead")
        self._aggregation(height).commitments[msg.sender] = list(commitment)
        self._try_aggregate(height)

    def _send_threshold(self, height: int, to: int) -> None:
        """Send our certificate of ``height`` to a replica that still offers commitments for it
        (at most once a retransmission interval)."""
        if self._cert_sent.get((height, to), -1) > self.now:
            return
        self._cert_sent[(height, to)] = self.now + self.config.retransmit_ms
        raw = self._cert_raw.get(height)
        if raw is None:
            raw = self._cert_raw[height] = self._sign([m.THRESHOLD_CERT, self.index, height,
                                                       self.threshold_certs[height].to_obj()])
        self._out.append(Send(to, raw))

    def _try_aggregate(self, height: int) -> None:
        """As aggregator, ask t replicas for shares of ``height`` when no request is in flight: our own
        commitment first, then the lowest indices that neither sent a bad share nor let the last request
        time out (those too when the others are fewer than t)."""
        cfg = self.config
        if cfg.group_key is None:
            return
        if height > self.height or height in self.threshold_certs or height <= self.height - THRESHOLD_WINDOW \
                or height < self._threshold_set_start():
            return
        agg = self._aggregation(height)
        if agg.signers:
            return
        if self._threshold_share is not None and self.index not in agg.commitments:
            agg.commitments[self.index] = self._held_nonces(height, self.index)[1]
        t = cfg.quorum
        usable = [i for i in sorted(agg.commitments) if i not in agg.bad]
        chosen = [i for i in usable if i not in agg.slow]
        if len(chosen) < t:
            agg.slow.clear()
            chosen = usable
        if len(chosen) < t:
            return
        if self.index in chosen:
            chosen = [self.index] + [i for i in chosen if i != self.index][:t - 1]
        chosen = sorted(chosen[:t])
        agg.signers = tuple(chosen)
        agg.request = [agg.commitments.pop(i) for i in chosen]    # each commitment is asked for once
        agg.shares = {}
        agg.view = self.view
        agg.deadline = self.now + THRESHOLD_SHARE_TIMEOUT_DIV * cfg.retransmit_ms
        hh = self.chain[height].hash
        raw = self._sign([m.SIGN_REQUEST, self.index, self.view, height, hh, agg.request])
        for i in chosen:
            if i != self.index:
                self._out.append(Send(i, raw))
        if self.index in chosen:
            try:
                agg.shares[self.index + 1] = self._make_share(height, self.view, agg.request, self.index)
            except MessageError as exc:
                self._drop(exc.reason, self.index)
            agg.commitments[self.index] = self._held_nonces(height, self.index)[1]
        self._maybe_finish(height)

    def _make_share(self, height: int, view: int, commitments: list, aggregator: int) -> int:
        """Our share of the certificate of committed block ``height`` under ``commitments``, which must
        hold the commitment of the nonces we hold for it and ``aggregator``; those nonces are dropped
        before signing (used once) and new ones made."""
        per_height = self._nonces.get(height, {})
        held = per_height.get(aggregator)
        mine = [c for c in commitments if c[0] == self.index + 1]
        if held is None or len(mine) != 1 or list(mine[0]) != held[1]:
            raise MessageError("unknown commitment")
        del per_height[aggregator]
        try:
            return frost.sign(self.index + 1, self._threshold_share, self.config.group_key, held[0],
                              self._commit_bytes(height, view), [list(c) for c in commitments])
        except LedgerlinkError as exc:
            raise MessageError("bad sign request") from exc
        finally:
            self._held_nonces(height, aggregator)

    def _on_sign_request(self, msg: Message) -> None:
        view, height, hh, commitments = msg.fields
        cfg = self.config
        if self._threshold_share is None:
            raise MessageError("no threshold key")
        if height > self.height or self.chain[height].hash != hh:
            raise MessageError("not committed")             # never a share for a header not committed here
        if height in self.threshold_certs:
            self._send_threshold(height, msg.sender)
            return
        if len(commitments) != cfg.quorum or any(c[0] > cfg.n for c in commitments):
            raise MessageError("bad sign request")
        made = self._shares_made.get(height, 0)
        if made >= SHARES_PER_HEIGHT_MAX:
            raise MessageError("share limit")
        self._shares_made[height] = made + 1
        z = self._make_share(height, view, list(commitments), msg.sender)
        self._out.append(Send(msg.sender, self._sign([m.SIGNATURE_SHARE, self.index, height, hh,
                                                      frost.scalar_bytes(z), self._nonces[height][msg.sender][1]])))

    def _on_signature_share(self, msg: Message) -> None:
        height, hh, z_bytes, commitment = msg.fields
        if commitment[0] != msg.sender + 1:
            raise MessageError("bad commitment")
        agg = self._aggregations.get(height)
        if agg is None or height > self.height:
            raise MessageError("no request")
        agg.commitments[msg.sender] = list(commitment)      # its next one (the one asked for is used)
        if msg.sender not in agg.signers or msg.sender + 1 in agg.shares or hh != self.chain[height].hash:
            raise MessageError("unexpected share")
        agg.shares[msg.sender + 1] = int.from_bytes(z_bytes, "big") % frost.N
        self._maybe_finish(height)

    def _maybe_finish(self, height: int) -> None:
        """All shares of the request in: aggregate (the result is verified) and broadcast the
        certificate; else name each bad share's sender, never ask it again for this height, and retry."""
        cfg = self.config
        agg = self._aggregations[height]
        if len(agg.shares) < len(agg.signers):
            return
        message = self._commit_bytes(height, agg.view)
        try:
            signature = frost.aggregate(cfg.group_key, agg.request, message, agg.shares)
        except LedgerlinkError:
            for i in agg.signers:
                try:
                    ok = frost.verify_share(i + 1, cfg.verifying_shares[i], cfg.group_key, agg.request,
                                            message, agg.shares[i + 1])
                except LedgerlinkError:
                    ok = False
                if not ok:
                    agg.bad.add(i)
                    self._drop("bad threshold share", i)
            agg.signers = ()
            return                                          # retried by the timers
        tcert = ThresholdCertificate(agg.view, signature)
        self.threshold_latency_ms.append(self.now - agg.committed_at)
        self._accept_threshold(height, tcert, persist=True, verified=True)
        raw = self._cert_raw[height] = self._sign([m.THRESHOLD_CERT, self.index, height, tcert.to_obj()])
        self._out.append(Broadcast(raw))

    def _accept_threshold(self, height: int, tcert: ThresholdCertificate, persist: bool,
                          verified: bool = False) -> None:
        """Keep the certificate of our committed block ``height`` once it verifies under the group key."""
        cfg = self.config
        if height > self.height:
            raise MessageError("too far ahead")
        if not verified:
            if cfg.group_key is None:
                raise MessageError("no group key")
            try:
                ok = frost.verify(cfg.group_key, self._commit_bytes(height, tcert.view), tcert.signature)
            except LedgerlinkError:
                ok = False
            if not ok:
                raise MessageError("bad threshold certificate")
        self.threshold_certs[height] = tcert
        self._nonces.pop(height, None)
        self._aggregations.pop(height, None)
        if persist:
            self._out.append(PersistThreshold(height, tcert.encode()))

    def _on_threshold_cert(self, msg: Message) -> None:
        height, tcert = msg.fields
        cfg = self.config
        if height in self.threshold_certs:
            raise MessageError("duplicate")
        if height > self.height:
            if height > self.height + 1 + cfg.lookahead + cfg.max_blocks_per_reply:
                raise MessageError("too far ahead")
            self._early_certs.setdefault(height, {})[msg.sender] = tcert   # checked when the block commits
            return
        self._accept_threshold(height, tcert, persist=True)

    def _threshold_new_view(self) -> None:
        """A new view has a new aggregator: offer it our commitments of the heights still without a
        certificate (it takes over their aggregation); requests of an earlier view are void."""
        if self.config.group_key is None:
            return
        for agg in self._aggregations.values():
            agg.signers = ()
        for height in self._pending_threshold()[-THRESHOLD_RESEND_MAX:]:
            self._offer_commitment(height)
            self._try_aggregate(height)

    def _threshold_timers(self) -> None:
        """Retry an aggregation whose shares did not all come in time, without the replicas that did not
        answer (while enough others are there)."""
        if not self._aggregations:
            return
        for height, agg in list(self._aggregations.items()):
            if agg.signers and self.now >= agg.deadline:
                agg.slow = {i for i in agg.signers if i + 1 not in agg.shares}
                agg.signers = ()
                self._try_aggregate(height)

    def _threshold_retransmit(self) -> None:
        """Offer the aggregator again our commitments of heights still without a certificate, and one
        other peer in turn (whoever holds the certificate answers with it: a replica left in a view
        change, or one the broadcast missed, gets it so); as aggregator, retry them."""
        cfg = self.config
        if cfg.group_key is None:
            return
        pending = self._pending_threshold()
        if pending and pending[-1] == self.height and self.now - self.committed_at < cfg.retransmit_ms:
            pending.pop()
        if not pending:
            return
        self._cert_round += 1
        peer = (self.index + 1 + self._cert_round % (cfg.n - 1)) % cfg.n if cfg.n > 1 else self.index
        for height in pending[:THRESHOLD_RESEND_MAX]:
            if self.is_primary() or self.in_view_change:
                self._try_aggregate(height)
            else:
                self._offer_commitment(height, again=True)
            if self._threshold_share is not None and peer != self.index \
                    and (peer != cfg.primary(self.view) or self.in_view_change):
                self._out.append(Send(peer, self._held_nonces(height, peer)[2]))

def _decode_message(chain_id: str, validators: tuple[bytes, ...], crypto: m.Crypto, limits: m.Limits,
                    data: bytes) -> Message:
    return m.decode_message(data, chain_id, validators, crypto, limits)
