"""A deterministic development network for tests of the ledger, the gateway and the devices.

``DevNet`` derives one key per member name from a seed, writes a genesis config that registers admins,
validators and the usual devices, and signs transactions with counter-derived nonces, so two runs (and
two replicas) see byte-identical transactions. With ``threshold=True`` the validators also run the FROST
DKG (t = 2f+1, seeded, in this process) and the genesis records the group key and verifying shares;
``frost_keys`` gives the signing shares. Never use these keys outside tests.
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

from ledgerlink.core.backend import get_backend
from ledgerlink.core.p256 import N

from ledgerlink.ledger.state import encoding as enc
from ledgerlink.ledger.state.codes import Role
from ledgerlink.ledger.state.machine import LedgerState

GENESIS_TIME = 1_700_000_000_000

# Members registered at genesis (beyond the admins and validators) and their roles.
GENESIS_DEVICES = {
    "gateway": Role.GATEWAY,
    "gateway2": Role.GATEWAY,
    "sensor": Role.SENSOR,
    "actuator": Role.ACTUATOR,
    "controller": Role.CONTROLLER,
    "maintenance": Role.MAINTENANCE,
}


class Member:
    """A named key pair: ``priv``, compressed ``pub`` and device ``id``."""

    def __init__(self, name: str, priv: bytes, backend: Any) -> None:
        self.name = name
        self.priv = priv
        self.pub = backend.public_key(priv, True)
        self.id = enc.device_id(self.pub)

    def __repr__(self) -> str:
        return "Member(%r)" % self.name


class DevNet:
    """Keys, genesis config and transaction factory of a test chain."""

    def __init__(self, chain_id: str = "ll-test", time_ms: int = GENESIS_TIME, seed: bytes = b"ll-devnet",
                 validators: int = 4, admins: int = 2, backend: Any = "cpython", threshold: bool = False,
                 **chain: Any) -> None:
        self.chain_id = chain_id
        self.time_ms = time_ms
        self.seed = seed
        self.backend = get_backend(backend)
        self.chain = chain
        self._members: dict[str, Member] = {}
        self._counter = 0
        self.admin_names = ["admin"] + ["admin%d" % i for i in range(2, admins + 1)]
        self.validator_names = ["validator%d" % i for i in range(validators)]
        self.threshold = threshold
        self._frost: tuple[list[int], tuple[bytes, ...], bytes] | None = None

    @property
    def frost_keys(self) -> tuple[list[int], tuple[bytes, ...], bytes]:
        """(signing share of each validator, verifying shares, group key) from a seeded dealerless DKG."""
        if self._frost is None:
            import random

            from ledgerlink.ledger.cluster import dkg_in_process
            from ledgerlink.ledger.consensus.messages import quorum

            n = len(self.validator_names)
            rng = random.Random(hashlib.sha256(self.seed + b"/frost").digest()).randbytes
            self._frost = dkg_in_process(n, quorum(n), rng, self.chain_id.encode())
        return self._frost

    def __getitem__(self, name: str) -> Member:
        member = self._members.get(name)
        if member is None:
            counter = 0
            while True:
                digest = hashlib.sha256(self.seed + b"/" + name.encode() + bytes((counter,))).digest()
                if 0 < int.from_bytes(digest, "big") < N:
                    break
                counter += 1
            member = self._members[name] = Member(name, digest, self.backend)
        return member

    def config(self) -> dict:
        """Genesis config of the network."""
        cfg: dict[str, Any] = {
            "chain_id": self.chain_id,
            "time_ms": self.time_ms,
            "admins": [{"key": self[n].pub, "attributes": {"name": n}} for n in self.admin_names],
            "validators": [self[n].pub for n in self.validator_names],
            "devices": [{"key": self[n].pub, "role": r, "attributes": {"name": n}}
                        for n, r in GENESIS_DEVICES.items()],
        }
        if self.threshold:
            _, verifying, group_key = self.frost_keys
            cfg.update(group_key=group_key, verifying_shares=list(verifying))
        cfg.update(self.chain)
        return cfg

    def genesis(self) -> LedgerState:
        return LedgerState.genesis(self.config(), self.backend)

    def nonce(self) -> bytes:
        self._counter += 1
        return hashlib.sha256(self.seed + b"/nonce/" + self._counter.to_bytes(8, "big")).digest()[:16]

    def tx(self, signer: str, kind: int, fields: Mapping[int, Any], time_ms: int | None = None,
           nonce: bytes | None = None, kid: bytes | None = None) -> bytes:
        """A transaction of ``kind`` signed by member ``signer`` (kid: its device id unless given)."""
        return enc.build_tx(self.chain_id, self[signer].priv, kind, self.time_ms if time_ms is None else time_ms,
                            fields, nonce=nonce or self.nonce(), kid=kid or self[signer].id, backend=self.backend)

    def request(self, name: str, role: int, attributes: Mapping[str, Any] | None = None,
                time_ms: int | None = None) -> bytes:
        """Member ``name``'s own registration request."""
        return enc.registration_request(self[name].priv, role, attributes or {"name": name},
                                        self.time_ms if time_ms is None else time_ms, self.backend)

    def register(self, admin: str, name: str, role: int, attributes: Mapping[str, Any] | None = None,
                 time_ms: int | None = None) -> bytes:
        """Admin ``admin`` registers member ``name`` with ``role``."""
        return self.tx(admin, 1, {4: self.request(name, role, attributes, time_ms)}, time_ms)

    def rotate(self, name: str, new_name: str, time_ms: int | None = None, kid: bytes | None = None) -> bytes:
        """Member ``name`` (device id ``kid``, default its own) rotates to the key of member ``new_name``."""
        dev = kid or self[name].id
        nonce = self.nonce()
        new = self[new_name]
        pop = self.backend.sign(new.priv, enc.rotation_message(self.chain_id, dev, new.pub, nonce))
        return self.tx(name, 2, {4: new.pub, 5: pop}, time_ms, nonce=nonce, kid=dev)

    def block(self, state: LedgerState, txs: list, time_ms: int | None = None) -> list:
        """Execute ``txs`` as the next block of ``state``, commit it and return the per-tx results."""
        height = 1 if state.height is None else state.height + 1
        state.execute(height, self.time_ms if time_ms is None else time_ms, txs)
        state.commit(height)
        return state.results_of(height)
