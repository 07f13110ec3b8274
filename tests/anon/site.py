"""A test site for anonymous sessions: a DevNet ledger whose blocks are certified by its validators
(``FakeLedgerAdapter``, so the fog checks real record proofs), devices A, B and C, one or two fogs and
the cloud, wired together in memory. ``Site.session(name)`` runs one session set-up and records what each party saw."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from ledgerlink.gateway.anon_cloud import AnonCloud
from ledgerlink.gateway.anon_fog import AnonFog, AnonGrant, AnonRefused, AnonReply, AnonSpend, AnonStore
from ledgerlink.ledger.state import RecordKind as RK
from ledgerlink.ledger.state.codes import Role
from ledgerlink.protocol import anon_device, anon_wire
from ledgerlink.protocol.ledger_tx import anon_certs_tx
from tests.devnet import DevNet
from tests.gateway.fake_ledger import FakeLedgerAdapter

SITE = "plant-1"
BATCH = 4
DEVICES = ("devA", "devB", "devC")
STEP_MS = 1000


class Rng:
    """Deterministic random bytes (SHA-256 in counter mode over a label)."""

    def __init__(self, label: str) -> None:
        self.seed = hashlib.sha256(label.encode()).digest()
        self.count = 0

    def __call__(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            self.count += 1
            out += hashlib.sha256(self.seed + self.count.to_bytes(8, "big")).digest()
        return out[:n]


def secret_of(name: str) -> bytes:
    return hashlib.sha256(b"anon-secret/" + name.encode()).digest()


@dataclass
class Outcome:
    """One session set-up: every byte string each party saw or kept, and the effects."""

    name: str
    broker: list = field(default_factory=list)      # (topic, payload) published
    ledger: list = field(default_factory=list)      # spend tx bytes and the records it wrote
    fog_effects: list = field(default_factory=list)
    session: object = None
    refused: object = None
    cloud_session: object = None


class Site:
    def __init__(self, tmp_path, fogs: int = 1) -> None:
        self.net = DevNet()
        self.time_ms = self.net.time_ms
        self.ledger = FakeLedgerAdapter(self.net, clock=lambda: self.time_ms)
        self.state = self.ledger.state
        regs = [self.net.register("admin", name, Role.SENSOR) for name in DEVICES]
        batch = []
        for name in DEVICES:
            batch += anon_wire.certificate_batch(secret_of(name), 1, BATCH)
        self.certs_tx = anon_certs_tx(self.net.chain_id, self.net["admin"].priv, batch, self.time_ms,
                                      nonce=self.net.nonce())
        assert [r.code for r in self.block(regs + [self.certs_tx])] == [0, 0, 0, 0]
        self.cloud_priv = self.net["cloud-escrow"].priv
        self.cloud = AnonCloud(self.cloud_priv, {self.net[g].id: self.net[g].pub for g in ("gateway", "gateway2")},
                               self.device_key, backend=self.net.backend)
        self.stores = [AnonStore(str(tmp_path / ("fog%d.sqlite" % i))) for i in range(fogs)]
        self.fogs = [AnonFog(SITE, self.net.chain_id, self.ledger.keys, self.net["fog-ecies"].priv, self.net[g].priv,
                             self.cloud.public_key, self.cert_proof, self.stores[i], Rng("fog%d" % i),
                             backend=self.net.backend)
                     for i, g in enumerate(("gateway", "gateway2")[:fogs])]
        self.devices = {}
        for name in DEVICES:
            counter = anon_device.AnonCounter(str(tmp_path / (name + ".counter")), secret_of(name))
            counter.provision()
            self.devices[name] = anon_device.AnonDevice(
                SITE, self.net[name].id, self.net[name].priv, secret_of(name), counter, BATCH,
                self.fogs[0].public_key, self.cloud.public_key, Rng("device/" + name), backend=self.net.backend)

    def device_key(self, dev: bytes) -> bytes | None:
        rec = self.state.get_record(RK.DEVICE, dev)
        return None if rec is None else rec[2]

    def cert_proof(self, anon_id: bytes) -> dict:
        return self.ledger.record(RK.ANON_CERT, anon_id)["proof"]

    def block(self, txs: list, time_ms: int | None = None) -> list:
        """Commit ``txs`` as the next certified block; their results."""
        return self.ledger.commit_block(list(txs), self.time_ms if time_ms is None else time_ms)

    def tick(self) -> int:
        self.time_ms += STEP_MS
        return self.time_ms

    def submit(self, name: str, request, fog: int = 0, outcome: Outcome | None = None) -> Outcome:
        """Deliver ``request`` to fog ``fog``, run its spend through a ledger block, deliver the answers."""
        out = outcome or Outcome(name)
        now = self.tick()
        out.broker.append((request.topic, request.payload))
        effects = self.fogs[fog].on_request(request.topic, request.payload, now)
        out.fog_effects += effects
        for effect in list(effects):
            if isinstance(effect, AnonSpend):
                result = self.block([effect.tx], now)[0]
                out.ledger.append(effect.tx)
                proof = None
                if result.code == 0:
                    spent = anon_wire.secondary_hash(self._spent_id(effect.tx))
                    out.ledger.append(self.state.get_record_bytes(RK.ANON_SPENT, spent))
                    proof = self.ledger.record(RK.ANON_SPENT, spent)["proof"]
                more = self.fogs[fog].on_spend_result(effect.tx_id, result.code, now, proof)
                out.fog_effects += more
                effects += more
        for effect in effects:
            if isinstance(effect, AnonReply):
                out.broker.append((effect.topic, effect.payload))
                if effect.topic == request.reply_topic:
                    try:
                        out.session = anon_device.check_response(request, effect.payload, self.net.backend)
                    except anon_device.AnonRefused as exc:
                        out.refused = exc.code
            elif isinstance(effect, AnonGrant):
                out.broker.append((effect.topic, effect.payload))
                out.cloud_session = self.cloud.on_grant(effect.payload)
            elif isinstance(effect, AnonRefused) and out.refused is None:
                out.refused = effect.reason
        return out

    def _spent_id(self, tx: bytes) -> bytes:
        from ledgerlink.core import cbor, cose

        return cbor.loads(cose.decode_sign1(tx).payload)[4]

    def session(self, name: str, fog: int = 0) -> Outcome:
        request = self.devices[name].request(self.tick())
        return self.submit(name, request, fog)
