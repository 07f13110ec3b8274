"""A test chain that releases updates: the maintenance key signs manifests, the ledger records them, and
record proofs come with headers certified by the validators (a lying node's proofs are made here too)."""

from __future__ import annotations

import hashlib
from typing import Any

from ledgerlink.core import merkle, smt
from ledgerlink.ledger.consensus import messages as msgs
from ledgerlink.ledger.state.codes import RecordKind, Role
from ledgerlink.protocol import ledger_tx, spv, update_check, update_manifest
from tests.devnet import DevNet

DEVICE_CLASS = "sensor-v2"


class ReleaseSite:
    """A DevNet ledger with a maintenance key; ``release`` makes offers as ``ledgerlink admin release`` does."""

    group_key: bytes | None = None      # a threshold ledger's FROST group key: its headers name it

    def __init__(self, votes: int = 3) -> None:
        self.net = DevNet()
        self.state = self.net.genesis()
        self.votes = votes
        self.keys = [self.net[n].pub for n in self.net.validator_names]
        self.height = 0
        self.prev = bytes(32)
        self.certified: list | None = None
        self.commit([])

    @property
    def chain_id(self) -> str:
        return self.net.chain_id

    def commit(self, txs: list[bytes]) -> list[int]:
        """Execute ``txs`` as the next block, certify its header with ``votes`` validator signatures; the
        result codes."""
        self.height += 1
        time_ms = self.net.time_ms + self.height * 1000
        root = self.state.execute(self.height, time_ms, txs)
        self.state.commit(self.height)
        header = msgs.Header(self.chain_id, self.height, self.prev, time_ms, merkle.root_of(txs), root,
                             spv.validators_hash(self.keys, self.group_key))
        hh = header.hash()
        sign = msgs.commit_sign_bytes(self.chain_id, self.height, 0, hh)
        cert = msgs.CommitCertificate(self.height, 0, hh, tuple(
            (i, self.net.backend.sign(self.net[self.net.validator_names[i]].priv, sign)) for i in range(self.votes)))
        self.certified = [header.to_obj(), cert.to_obj()]
        self.prev = hh
        return [r.code for r in self.state.results_of(self.height)]

    def proof(self, kind: int, record_id: Any) -> dict:
        key, value, proof = self.state.prove(kind, record_id)
        return {1: self.certified, 2: key, 3: value, 4: smt.proof_to_cbor_obj(proof)}

    def record_tx(self, signed: bytes, payload_size: int, signer: str = "maintenance") -> bytes:
        s = update_manifest.Signed(signed)
        m = s.manifest
        return ledger_tx.firmware_tx(self.chain_id, self.net[signer].priv, s.digest, m.version or str(m.sequence),
                                     m.device_class, m.component, self.net.time_ms, size=payload_size,
                                     sequence=m.sequence, nonce=self.net.nonce(), backend=self.net.backend)

    def manifest(self, payload: bytes, component: int, sequence: int, device_class: str = DEVICE_CLASS,
                 chunk_size: int = 256, dependencies: tuple = (), version: str | None = None,
                 size: int | None = None) -> update_manifest.Manifest:
        return update_manifest.Manifest(sequence, component, device_class, hashlib.sha256(payload).digest(),
                                        len(payload) if size is None else size, chunk_size, dependencies,
                                        version or "v%d" % sequence)

    def release(self, payload: bytes, component: int, sequence: int, signer: str = "maintenance",
                on_ledger: bool = True, **kw: Any) -> bytes:
        """An offer of ``payload``: manifest signed by ``signer``, recorded (unless not ``on_ledger``), proved."""
        m = self.manifest(payload, component, sequence, **kw)
        signed = update_manifest.sign(m, self.net[signer].priv, self.net[signer].id, self.net.backend)
        if on_ledger:
            assert self.commit([self.record_tx(signed, m.size, signer)]) == [0]
        digest = update_manifest.manifest_digest(m.encode())
        return update_check.encode_offer(signed, self.proof(RecordKind.DEVICE, self.net[signer].id),
                                         self.proof(RecordKind.FIRMWARE, digest))

    def register_maintenance(self, name: str) -> None:
        assert self.commit([self.net.register("admin", name, Role.MAINTENANCE)]) == [0]


def install(agent: Any, offer: bytes, payload: bytes, now_ms: int | None = None) -> dict:
    """The device's whole download: offer, every chunk it asks for, finish."""
    m = agent.offer(offer)
    while (index := agent.next_chunk()) is not None:
        agent.chunk(index, payload[index * m.chunk_size:(index + 1) * m.chunk_size])
    return agent.finish(now_ms)


def offer_digest(offer: bytes) -> bytes:
    """The manifest digest of an offer."""
    from ledgerlink.core import cbor

    return update_manifest.Signed(cbor.loads(offer)[1]).digest
