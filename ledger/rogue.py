"""A Byzantine validator for tests and the benchmark: the honest node process with one attack.

``python3 -m ledgerlink.ledger.rogue --config C --index i --data DIR --attack KIND`` runs validator
``i`` with its real key, exactly as ``ledgerlink.ledger.node`` does (same transport, hello and
replica), and between ``--start-at`` and ``--stop-at`` (Unix seconds; default: from the start, for
good), or with ``--on-signal`` from a SIGUSR1 to a SIGUSR2, it also attacks the other validators:

  slow         as primary, holds each of its pre-prepares ``--hold-ms`` (800) before sending it;
  equivocate   as primary, sends two different signed pre-prepares for each height (the header's
               time one millisecond apart) to two halves of the others, and as any replica sends
               conflicting prepares and commits (the vote for the other header, or a random hash);
  oversized    sends each peer ``--rate`` (2) frames a second of ``max_message_size`` bytes that are
               valid CBOR but not canonical (an array of uints in non-minimal encoding);
  fetch-flood  sends each peer ``--rate`` (1000) signed ``fetch-blocks 0..10^6`` a second and never
               reads what its peers send it (it stops reading its inbound peer connections);
  vote-flood   sends each peer ``--rate`` (1000) signed prepares and commits a second for random
               header hashes at the heights and views just above its own.

Outside the attack window the rogue is an honest replica. It is the attacker that N = 3f+1, f = 1
must tolerate; the tests (tests/ledger/test_byzantine_cluster.py) and ``python3 -m
ledgerlink.ledger.bench --byzantine`` run it beside 3 honest node processes and check safety and
the honest nodes' block rate and memory.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import random
import signal
import time
from typing import Any

from ledgerlink.ledger.attacks import noncanonical_frame
from ledgerlink.ledger.consensus import messages as m
from ledgerlink.ledger.consensus.replica import Broadcast, Send
from ledgerlink.ledger.node import Node, load_key, node_arguments, start_logging
from ledgerlink.ledger.transport import ClusterConfig

log = logging.getLogger("ledgerlink.rogue")

ATTACKS = ("slow", "equivocate", "oversized", "fetch-flood", "vote-flood")
DEFAULT_RATE = {"oversized": 2.0, "fetch-flood": 1000.0, "vote-flood": 1000.0}
DEFAULT_HOLD_MS = 800
FLOOD_TICK_S = 0.02
NEVER_READ_AFTER_S = 0.5      # inbound connections older than this stop being read (the hello is done)


class RogueNode(Node):
    """``Node`` with one attack of the module docstring."""

    def __init__(self, config: ClusterConfig, index: int, data_dir: str, key: bytes, attack: str,
                 rate: float | None = None, hold_ms: int = DEFAULT_HOLD_MS, start_at: float = 0.0,
                 stop_at: float = float("inf")) -> None:
        if attack not in ATTACKS:
            raise ValueError("unknown attack %r" % attack)
        super().__init__(config, index, data_dir, key)
        self.attack = attack
        self.rate = rate if rate is not None else DEFAULT_RATE.get(attack, 0.0)
        self.hold_ms = hold_ms
        self.start_at = start_at
        self.stop_at = stop_at
        self._key = key
        self._variants: dict[bytes, bytes] = {}        # header hash -> the other header's hash
        self._rnd = random.Random()
        self.sent = 0
        self._junk = noncanonical_frame(self.rconfig.max_message_size) if attack == "oversized" else b""
        self._fetch: bytes | None = None
        self._paused: set[Any] = set()
        self._inbound_seen: dict[Any, float] = {}

    def active(self) -> bool:
        return self.start_at <= time.time() < self.stop_at

    def begin(self) -> None:
        """Attack from now on."""
        self.start_at, self.stop_at = time.time(), float("inf")
        log.warning("rogue %d: attack %s starts", self.index, self.attack)

    def end(self) -> None:
        """Stop attacking."""
        self.stop_at = time.time()
        log.warning("rogue %d: attack %s stops after %d attack messages", self.index, self.attack, self.sent)

    def _peers(self) -> list[int]:
        return [i for i in range(self.config.n) if i != self.index]

    def _resign(self, body: list) -> bytes:
        return m.encode_message(self.config.chain_id, body, self._key, self.backend)

    # --- attacks on outgoing messages ---------------------------------------------------------------

    def effects(self, effects: list) -> None:
        if self.attack not in ("slow", "equivocate") or not self.active():
            super().effects(effects)
            return
        keep = []
        for e in effects:
            if isinstance(e, (Broadcast, Send)):
                a = m.loads(e.data)
                if self.attack == "slow" and a[0] == m.PRE_PREPARE:
                    super().effects(keep)
                    keep = []
                    asyncio.get_running_loop().call_later(self.hold_ms / 1000, super().effects, [e])
                    continue
                if self.attack == "equivocate" and a[0] in (m.PRE_PREPARE, m.PREPARE, m.COMMIT):
                    super().effects(keep)
                    keep = []
                    self._equivocate(e, a)
                    continue
            keep.append(e)
        super().effects(keep)

    def _equivocate(self, e: Broadcast | Send, a: list) -> None:
        dsts = self._peers() if isinstance(e, Broadcast) else [e.to]
        others = list(dsts)
        self._rnd.shuffle(others)
        half = set(others[: max(1, len(others) // 2)])
        if a[0] == m.PRE_PREPARE:
            header = list(a[4])
            orig = m.Header.from_obj(a[4]).hash()
            header[3] += 1                                   # time_ms
            alt_hash = m.Header.from_obj(header).hash()
            self._variants[orig] = alt_hash
            if len(self._variants) > 1000:
                self._variants.pop(next(iter(self._variants)))
            alt = self._resign([a[0], a[1], a[2], a[3], header, a[5]])
        else:
            alt_hash = self._variants.get(a[4]) or os.urandom(32)
            alt = self._resign([a[0], a[1], a[2], a[3], alt_hash])
        for d in dsts:
            self.net.send(d, alt if d in half else e.data)
            self.sent += 1

    # --- floods -----------------------------------------------------------------------------------

    async def _flood(self) -> None:
        owed = 0.0
        last = time.monotonic()
        while True:
            await asyncio.sleep(FLOOD_TICK_S)
            now = time.monotonic()
            if not self.active():
                last = now
                owed = 0.0
                self._resume_reading()
                continue
            if self.attack == "fetch-flood":
                self._stop_reading()
            owed += self.rate * (now - last)
            last = now
            k = int(owed)
            owed -= k
            for _ in range(min(k, int(self.rate) + 1)):
                for peer in self._peers():
                    self.net.send(peer, self._flood_message())
                    self.sent += 1

    def _flood_message(self) -> bytes:
        r = self.replica
        if self.attack == "oversized":
            return self._junk
        if self.attack == "fetch-flood":
            if self._fetch is None:                      # signatures are deterministic: one is all it takes
                self._fetch = self._resign([m.FETCH_BLOCKS, self.index, 0, 10 ** 6])
            return self._fetch
        kind = self._rnd.choice((m.PREPARE, m.COMMIT))
        view = r.view + self._rnd.randint(0, 2)
        height = r.height + 1 + self._rnd.randint(0, r.config.lookahead)
        return self._resign([kind, self.index, view, height, os.urandom(32)])

    def _stop_reading(self) -> None:
        """Stop reading the inbound peer connections that are past their hello."""
        now = time.monotonic()
        for w in list(getattr(self.net, "inbound", ())):
            first = self._inbound_seen.setdefault(w, now)
            if w not in self._paused and now - first >= NEVER_READ_AFTER_S:
                try:
                    w.transport.pause_reading()
                    self._paused.add(w)
                except Exception:
                    pass

    def _resume_reading(self) -> None:
        for w in list(self._paused):
            try:
                w.transport.resume_reading()
            except Exception:
                pass
        self._paused.clear()
        self._inbound_seen.clear()

    async def start(self) -> None:
        await super().start()
        if self.attack in ("oversized", "fetch-flood", "vote-flood"):
            self._tasks.append(asyncio.create_task(self._flood()))


async def _main(args: argparse.Namespace) -> None:
    config = ClusterConfig.load(args.config)
    key_file = args.key or config.nodes[args.index].key_file
    if key_file is None:
        raise SystemExit("no key file: give --key or nodes[i].key_file in the config")
    start_at = float("inf") if args.on_signal else args.start_at
    node = RogueNode(config, args.index, args.data, load_key(key_file), args.attack, args.rate, args.hold_ms,
                     start_at, args.stop_at)
    gc.freeze()
    await node.start()
    log.warning("rogue %d: attack %s (rate %s, hold %d ms) from %s to %s", args.index, args.attack, node.rate,
                args.hold_ms, args.start_at, args.stop_at)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, node.begin)
    loop.add_signal_handler(signal.SIGUSR2, node.end)
    await stop.wait()
    log.warning("rogue %d stopping at height %d after %d attack messages", args.index, node.replica.height,
                node.sent)
    await node.stop()


def main(argv: list[str] | None = None) -> None:
    p = node_arguments("python3 -m ledgerlink.ledger.rogue", __doc__.split("\n")[0])
    p.add_argument("--attack", required=True, choices=ATTACKS)
    p.add_argument("--rate", type=float, help="messages a second to each peer (floods)")
    p.add_argument("--hold-ms", type=int, default=DEFAULT_HOLD_MS, help="how long a slow primary holds a proposal")
    p.add_argument("--start-at", type=float, default=0.0, help="Unix time the attack starts")
    p.add_argument("--stop-at", type=float, default=float("inf"), help="Unix time the attack stops")
    p.add_argument("--on-signal", action="store_true", help="attack from a SIGUSR1 to a SIGUSR2 instead")
    args = p.parse_args(argv)
    start_logging(args, "rogue")
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
