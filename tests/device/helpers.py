"""A gateway and ledger for device tests: the real GatewayCore checks over a FakeLedgerAdapter chain."""

from __future__ import annotations

import hashlib

from ledgerlink.core import cbor, merkle
from ledgerlink.core.backend import get_backend
from ledgerlink.device.core import DeviceCore, MemoryCounter, SequenceCounter
from ledgerlink.gateway import checks as c
from ledgerlink.ledger.state.codes import Role, TxKind
from tests.devnet import DevNet

from tests.gateway.fake_ledger import FakeLedgerAdapter

CRYPTO = get_backend("cpython")
SITE = "plant-1"
NOW = DevNet().time_ms + 50_000


class Env:
    """Ledger (FakeLedgerAdapter), gateway (GatewayCore) and helpers to make receipts and commands."""

    def __init__(self) -> None:
        self.ledger = FakeLedgerAdapter(clock=lambda: NOW)
        self.net = self.ledger.net
        keys = c.GatewayKeys(self.net["gateway"].priv, self.net["gw-ca"].priv, self.net["gw-site"].priv)
        self.gw = c.GatewayCore(SITE, keys, self.net.chain_id, self.ledger.keys, backend=CRYPTO)
        self.ca_public = self.gw.ca_public
        self.batches = 0

    def device(self, name: str = "sensor", counter: MemoryCounter | None = None, **kw) -> DeviceCore:
        return DeviceCore(self.net[name].priv, SITE, SequenceCounter(counter or MemoryCounter(), reserve=4),
                          self.net.chain_id, self.ledger.keys, ca_public=self.ca_public, backend=CRYPTO, **kw)

    def feed(self, topic: str, frame: bytes, now: int = NOW) -> list:
        effects = self.gw.on_frame(topic, frame, now)
        out = []
        for e in effects:
            if isinstance(e, c.FetchRegistry):
                out.extend(self.gw.on_registry_proof(self.ledger.device_proof(e.device_id), now, e.device_id))
            else:
                out.append(e)
        return [e for e in out if not isinstance(e, (c.HeaderUpdated, c.Ignored))]

    def receipts(self, frame_hashes: list[bytes], seqs: list[int], signer: str = "gateway") -> list[dict]:
        """Anchor a batch of frame hashes on the ledger; one receipt map per frame."""
        self.batches += 1
        tree = merkle.MerkleTree(frame_hashes)
        tx = self.net.tx(signer, TxKind.ANCHOR, {4: self.batches, 5: tree.root(), 6: len(frame_hashes)}, time_ms=NOW)
        self.ledger.submit(tx)
        p = self.ledger.tx_proof(hashlib.sha256(tx).digest())
        assert p["ok"], p
        anchor = {1: p["tx"], 2: p["index"], 3: p["size"], 4: p["proof"]}
        return [{0: 1, 1: h, 2: s, 3: i, 4: len(frame_hashes), 5: list(tree.inclusion_proof(i)), 6: anchor,
                 7: p["certified_header"]} for i, (h, s) in enumerate(zip(frame_hashes, seqs))]

    def command(self, signer: str, target: bytes, seq: int, action: str, args, not_after: int,
                topic: str | None = None) -> bytes:
        from ledgerlink.core import cose

        body = cbor.dumps({1: target, 2: seq, 3: action, 4: args, 5: not_after})
        topic = topic or "ll/%s/dev/%s/cmd" % (SITE, target.hex())
        return cose.sign1(body, self.net[signer].priv, self.net[signer].id, topic.encode(), CRYPTO)


class Clock:
    """The board client's tick clock, moved by the test (and by its idle polls)."""

    def __init__(self) -> None:
        self.now = 0

    def ticks(self) -> int:
        return self.now

    def sleep(self, ms: int) -> None:
        self.now += ms


class BoardLink:
    """An MQTT object for the board client: every publish gets its PUBACK and goes to ``deliver``, whose
    answers (``events``) come back on the next poll; an empty poll moves the clock."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.events: list = []
        self.pid = 0

    def deliver(self, topic: str, payload: bytes) -> None:
        raise NotImplementedError

    def connect(self) -> None:
        pass

    def subscribe(self, topic, qos) -> None:
        pass

    def publish(self, topic, payload, qos=1, retain=False, pid=None, dup=False):
        if pid is None:
            self.pid += 1
            pid = self.pid
        self.events.append(("puback", pid))
        self.deliver(topic, bytes(payload))
        return pid

    def ping(self) -> None:
        pass

    def poll(self, timeout_ms):
        events, self.events = self.events, []
        if not events:
            self.clock.now += timeout_ms
        return events

    def close(self) -> None:
        pass

    disconnect = close


__all__ = ["Env", "SITE", "NOW", "CRYPTO", "Role", "Clock", "BoardLink"]
