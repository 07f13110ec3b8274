"""A live site for the device-to-device tests: mosquitto with its dynamic security plugin, a 4-node
ledger, the gateway and the site's directory (``ledgerlink.gateway.directory``), with registered devices
(``PeerDevice``) made on demand."""

from __future__ import annotations

import time
from typing import Any, Callable

import pytest

from ledgerlink.core.backend import get_backend
from ledgerlink.device.peer import PeerDevice
from ledgerlink.gateway.directory import Directory, DirectoryService
from ledgerlink.ledger.client import LedgerClient
from ledgerlink.ledger.state import encoding as enc
from ledgerlink.protocol import peer_session as ps
from ledgerlink.tools.pair_access import PairAccess
from ledgerlink.tools.stack import Stack

SITE = "m2m"
CRYPTO = get_backend("cpython")


def now_ms() -> int:
    return int(time.time() * 1000)


class Site:
    """The stack, its directory and a factory of registered peer devices."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.ledger = LedgerClient(stack.data_dir / "ledger" / "cluster.json")
        self.pairs = PairAccess(stack.access)
        self.directory = Directory(self.ledger, stack.chain_id, stack.validators, SITE, self.pairs)
        self.bans: dict[bytes, float] = {}
        self.service = DirectoryService(self.directory, stack.broker_host, stack.broker_port,
                                        self.pairs.directory_login(),
                                        on_ban=lambda dev, at: self.bans.__setitem__(dev, at)).start()
        self.devices: list[PeerDevice] = []

    def register(self, attributes: dict[str, Any], role: int = 1) -> tuple[bytes, bytes]:
        """(private key, device id) of a new device registered with ``attributes`` and its broker account."""
        priv = CRYPTO.generate_private_key()
        self.stack.register([enc.registration_request(priv, role, attributes, now_ms())])
        return priv, enc.device_id(CRYPTO.public_key(priv, True))

    def device(self, priv: bytes, handler: Callable | None = None, start: bool = True) -> PeerDevice:
        dev_id = enc.device_id(CRYPTO.public_key(priv, True))
        d = PeerDevice(priv, SITE, self.stack.chain_id, self.stack.validators, self.stack.broker_host,
                       self.stack.broker_port, self.stack.device_login(dev_id), handler)
        self.devices.append(d)
        return d.start() if start else d

    def close(self) -> None:
        for d in self.devices:
            d.stop()
        self.service.stop()
        self.ledger.close()


def machine_state(name: str) -> Callable:
    """A query handler: subject "state" is answered with the machine's name and a counter."""
    count = [0]

    def handler(packet: ps.Packet, peer: bytes) -> tuple[int, Any]:
        if packet.subject != "state":
            return ps.INFO_UNKNOWN_SUBJECT, None
        count[0] += 1
        return ps.INFO_OK, {"machine": name, "n": count[0], "args": packet.body}

    return handler


@pytest.fixture(scope="package")
def site(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("m2m"), site=SITE, broker="mosquitto", batch={"max": 256, "interval_ms": 50})
    s = None
    try:
        stack.start()
        s = Site(stack)
        yield s
    finally:
        if s is not None:
            s.close()
        stack.stop()
