"""The gateway without its transport: checks (``GatewayCore``), durable store and ledger lookups, wired.

``GatewayService.handle_frame`` runs a frame through the checks and carries out the effects in order:
an accepted frame is appended to the store (durable) before anything is published or acknowledged;
refusals are queued as ledger warnings and answered on the device's down topic; issued session
certificates are stored (to restore sessions after a restart and to record them on the ledger).
It returns what to publish and the SHA-256 of every frame that is now decided, so the transport
acknowledges a frame only after its durable append (or its refusal). Registry lookups
(``fetch_registry``) and the batcher's ledger calls block, so the transport runs them on other threads.

Protects against the loss of acknowledged frames (append before ack), replays across restarts
(``restore`` rebuilds the replay windows from the stored sequence numbers) and lost sessions (``restore``
re-derives session keys from the stored certificates). Tested through tests/gateway/test_e2e.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from ledgerlink.core import cbor
from ledgerlink.gateway import checks as c
from ledgerlink.gateway.batcher import Ledger, Outgoing
from ledgerlink.gateway.store import Store
from ledgerlink.ledger.state.codes import RecordKind

log = logging.getLogger("ledgerlink.gateway")


@dataclass
class Handled:
    """Result of feeding one input: what to publish, frames decided (to ack), registry lookups to run."""

    outgoing: list[Outgoing] = field(default_factory=list)
    decided: list[bytes] = field(default_factory=list)
    fetch: list[bytes] = field(default_factory=list)


class GatewayService:
    def __init__(self, core: c.GatewayCore, store: Store) -> None:
        self.core = core
        self.store = store
        self.observer: Any = None      # ``ledgerlink.gateway.metrics.GatewayMetrics``: sees inputs and effects

    def restore(self, now_ms: int) -> None:
        """After a (re)start: replay windows from the store, sessions from the stored certificates."""
        for dev, seq in self.store.highest_seqs().items():
            self.core.restore_window(dev, seq, now_ms)
        for dev, cert in self.store.certificates():
            try:
                self.core.install_session(cert, dev)
            except Exception as exc:  # noqa: BLE001 - a stored certificate that no longer parses
                log.warning("stored certificate not restored: %s", exc)

    def _effects(self, effects: list[c.Effect], now_ms: int) -> Handled:
        out = Handled()
        for e in effects:
            if isinstance(e, c.Accept):
                self.store.append_accepted(e.frame, e.device_id, e.seq, e.time_ms, e.topic, now_ms)
                out.outgoing.append(Outgoing(self.core.verified_topic(e.device_id),
                                             e.verified_reading(self.core.gateway_name)))
                out.decided.append(e.frame_hash)
            elif isinstance(e, c.Refuse):
                if e.report:
                    self.store.add_warning(e.warning_entry(), now_ms)
                if e.reply_topic is not None:
                    out.outgoing.append(Outgoing(e.reply_topic, e.reply()))
                out.decided.append(e.warning_id)
                log.info("refused %s from %s: %d %s", e.warning_id.hex()[:16], e.offender.hex(), e.code, e.text)
            elif isinstance(e, c.Reply):
                out.outgoing.append(Outgoing(e.topic, e.payload))
                if e.frame_hash is not None:
                    out.decided.append(e.frame_hash)
            elif isinstance(e, c.CertIssued):
                self.store.add_cert(e.device_id, e.cert, now_ms)
            elif isinstance(e, c.FetchRegistry):
                out.fetch.append(e.device_id)
            elif isinstance(e, c.HeaderUpdated):
                out.outgoing.append(Outgoing(self.core.header_topic(), e.certified, retain=True))
            elif isinstance(e, c.Ignored):
                log.warning("ignored: %s", e.reason)
        if self.observer is not None:
            self.observer.effects(effects, now_ms)
        return out

    def handle_frame(self, topic: str, payload: bytes, now_ms: int) -> Handled:
        if self.observer is not None:
            self.observer.frame(topic, payload, now_ms)
        return self._effects(self.core.on_frame(topic, payload, now_ms), now_ms)

    def handle_registry(self, dev: bytes, proof: object, now_ms: int) -> Handled:
        handled = self._effects(self.core.on_registry_proof(proof, now_ms, dev), now_ms)
        if self.observer is not None:
            self.observer.registry_updated(dev)
        return handled

    def handle_header(self, certified: object, now_ms: int) -> Handled:
        return self._effects(self.core.on_header(certified, now_ms), now_ms)

    def tick(self, now_ms: int) -> Handled:
        return self._effects(self.core.tick(now_ms), now_ms)


def fetch_registry(ledger: Ledger, dev: bytes) -> object | None:
    """The ledger's record proof of device ``dev`` (checked by the core, not here), or None."""
    try:
        res = ledger.record(int(RecordKind.DEVICE), dev)
    except Exception as exc:  # noqa: BLE001 - ledger unavailable; the core times the frame out
        log.warning("registry lookup failed: %s", exc)
        return None
    if not isinstance(res, dict) or not res.get("ok"):
        return None
    return res.get("proof")


def fetch_header(ledger: Ledger) -> bytes | None:
    try:
        res = ledger.latest()
    except Exception as exc:  # noqa: BLE001
        log.warning("header lookup failed: %s", exc)
        return None
    if not isinstance(res, dict) or not res.get("ok"):
        return None
    return cbor.dumps(res["certified_header"])
