"""The metrics of a ledger node, served as Prometheus ``/metrics``.

``NodeMetrics.attach(node)`` observes a running ``ledgerlink.ledger.node.Node``: it wraps the
instance's ``effects`` and ``_submit_all`` so committed transactions, dropped messages (by reason) and the
submit-to-commit latency of transactions submitted at this node are counted; view, height, pool size,
peer state and the port limits that bit (``ledgerlink_node_port_limited_total{port, limit}``, with the
bytes and connections they bound) are read when scraped. A node started without ``--metrics-port`` runs
unchanged. The registry and the HTTP server, with its port limits, are ``ledgerlink.service_http``'s.
Tested in tests/ledger/test_node_metrics.py (a node process scraped over HTTP).
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections import OrderedDict
from typing import Any, Callable, Iterable

from ledgerlink.service_http import Registry, WsgiServer, handler_app, metrics_handler

log = logging.getLogger("ledgerlink.metrics")


# --- ledger node ------------------------------------------------------------------------------------

def reason_label(reason: str) -> str:
    """A bounded label of a drop reason: the text before any ':' with numbers removed."""
    head = reason.split(":", 1)[0]
    return re.sub(r"\s+", " ", re.sub(r"[0-9]+", "", head)).strip()[:64] or "unknown"


class NodeMetrics:
    """Metrics of one ledger node (see the module docstring)."""

    MAX_TRACKED = 100000

    def __init__(self, node: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self.node = node
        self.clock = clock
        self.registry = reg = Registry()
        r = lambda: node.replica  # noqa: E731
        reg.gauge("ledgerlink_node_info", "Validator index and chain of this node (value 1).",
                  ("index", "chain_id"), func=lambda: {(str(node.index), node.config.chain_id): 1})
        reg.gauge("ledgerlink_node_height", "Height of the newest committed block.", func=lambda: r().height)
        reg.gauge("ledgerlink_node_view", "Current PBFT view.", func=lambda: r().view)
        reg.gauge("ledgerlink_node_primary", "Index of the primary of the current view.",
                  func=lambda: node.rconfig.primary(r().view))
        reg.gauge("ledgerlink_node_in_view_change", "1 while a view change is in progress.",
                  func=lambda: 1 if r().in_view_change else 0)
        reg.gauge("ledgerlink_node_pool_transactions", "Transactions waiting in the pool.", func=lambda: len(r().pool))
        reg.gauge("ledgerlink_node_validators", "Number of validators.", func=lambda: node.config.n)
        reg.counter_func("ledgerlink_node_slow_primary_demands_total",
                         "View changes this node demanded because the primary served too slowly.",
                         func=lambda: r().slow_primary_demands)
        reg.gauge("ledgerlink_node_equivocators", "Validators this node holds an equivocation proof against.",
                  func=lambda: len(r().convicted))
        self.committed_blocks = reg.counter("ledgerlink_node_committed_blocks_total",
                                            "Blocks committed since the node started.")
        self.committed_txs = reg.counter("ledgerlink_node_committed_transactions_total",
                                         "Transactions committed since the node started.")
        self.submitted = reg.counter("ledgerlink_node_submitted_transactions_total",
                                     "Client submissions received by this node.")
        reg.counter_func("ledgerlink_node_dropped_frames_total",
                         "Peer frames dropped by the transport (framing, bad hello).",
                         func=lambda: getattr(node.net, "dropped", 0))
        self.dropped = reg.counter("ledgerlink_node_dropped_messages_total",
                                   "Peer messages and transactions dropped, by reason.", ("reason",))
        reg.counter_func("ledgerlink_node_port_limited_total",
                         "Times a limit of the peer or client port bit (see ledger/transport.py), by limit.",
                         ("port", "limit"), func=lambda: _limited(node))
        reg.gauge("ledgerlink_node_peer_queued_bytes", "Bytes queued for the peers, all links.",
                  func=lambda: node.net.queued_bytes())
        reg.gauge("ledgerlink_node_peer_unsent_bytes",
                  "Bytes on their way to the peers not taken by them yet (queues, stream and kernel buffers), all links.",
                  func=lambda: sum(node.net.unsent_bytes(i) for i in node.net.links))
        reg.gauge("ledgerlink_node_peer_connections", "Authenticated inbound peer connections.",
                  func=lambda: len(node.net.peers))
        reg.gauge("ledgerlink_node_client_connections", "Open client port connections.",
                  func=lambda: len(node.client.conns))
        reg.gauge("ledgerlink_node_client_buffered_bytes", "Bytes of partial client frames held.",
                  func=lambda: node.client.buffered_bytes())
        self.commit_latency = reg.histogram("ledgerlink_node_commit_latency_seconds",
                                            "Time from a client submission at this node to its commit.")
        self._submitted_at: OrderedDict[bytes, float] = OrderedDict()

    def attach(self) -> "NodeMetrics":
        """Wrap the node's ``effects`` and ``_submit_all`` (every submission goes through it) on the instance."""
        from ledgerlink.ledger.consensus.replica import Committed, Dropped

        node = self.node
        effects, submit_all = node.effects, node._submit_all

        def observed_effects(items: list) -> None:
            for e in items:
                if isinstance(e, Committed):
                    self.on_committed(e.txs)
                elif isinstance(e, Dropped):
                    self.dropped.inc(1, (reason_label(e.reason),))
            effects(items)

        async def observed_submit_all(txs: list, wait: int) -> list[dict]:
            for tx in txs:
                if isinstance(tx, bytes):
                    self.submitted.inc()
                    h = hashlib.sha256(tx).digest()
                    if h not in self._submitted_at:
                        self._submitted_at[h] = self.clock()
                        if len(self._submitted_at) > self.MAX_TRACKED:
                            self._submitted_at.popitem(last=False)
            return await submit_all(txs, wait)

        node.effects = observed_effects
        node._submit_all = observed_submit_all
        return self

    def on_committed(self, txs: Iterable[bytes]) -> None:
        txs = list(txs)
        self.committed_blocks.inc()
        self.committed_txs.inc(len(txs))
        if not self._submitted_at:
            return
        now = self.clock()
        for tx in txs:
            t0 = self._submitted_at.pop(hashlib.sha256(tx).digest(), None)
            if t0 is not None:
                self.commit_latency.observe(now - t0)

    def serve(self, host: str, port: int) -> WsgiServer:
        return WsgiServer(host, port, handler_app(metrics_handler(self.registry))).start()


def _limited(node: Any) -> dict[tuple[str, str], int]:
    out = {("peer", k): v for k, v in list(node.net.limited.items())}
    out.update({("client", k): v for k, v in list(node.client.limited.items())})
    return out


def serve_node(node: Any, host: str, port: int) -> WsgiServer:
    """Attach ``NodeMetrics`` to ``node`` and serve ``/metrics`` on ``host:port``."""
    server = NodeMetrics(node).attach().serve(host, port)
    log.info("node %d metrics on http://%s:%d/metrics", node.index, host, server.port)
    return server
