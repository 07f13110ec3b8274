"""Forged ledger inputs: a lying ledger node feeding the gateway, and a forged retained header on MQTT.

The gateway takes device records, headers and anchor proofs only from its ledger client. Here a second
gateway process (site ``atk-evil``, on the same broker and ledger) talks to the ledger through a lying
proxy on every node's client port: it forwards requests to the real nodes and forges some answers --
a real device record proof with too few commit votes (2 of 4, the quorum is 3), device records of
unregistered keys under a rewritten state root (the real certificate kept, or votes signed by
attacker keys), and a latest header 1000 blocks ahead with attacker votes. The gateway must take none
of them (frames of those devices are never accepted, its verified height does not move to the forged
one, ``ignored_inputs`` counts them) and must keep serving a device whose answers are genuine.

On the main site an attacker publishes forged certified headers retained on ``ll/{site}/ledger/header``;
the gateway does not read that topic, keeps serving, and its next receipt republishes a genuine header.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from ledgerlink.core import cbor, smt
from ledgerlink.protocol import spv
from ledgerlink.gateway import checks as c
from ledgerlink.ledger.client import AsyncLedgerClient
from ledgerlink.ledger.transport import frame, read_frame
from ledgerlink.tools.stack import free_port
from tests.attacks.conftest import CRYPTO, Dev, Net, now_ms, sha256

EVIL_SITE = "atk-evil"
DEVICE_KIND = 1


def forge_votes(header: list, chain_id: str, view: int, keys: list[bytes]) -> list:
    """A commit certificate for ``header`` whose votes are signed by ``keys`` (indices 0..)."""
    h = sha256(cbor.dumps(header))
    msg = spv.commit_sign_bytes(chain_id, header[1], view, h)
    return [header[1], view, h, [[i, CRYPTO.sign(k, msg)] for i, k in enumerate(keys)]]


class LyingLedger:
    """A client port per node that forwards to the real node and rewrites the answers ``forge`` picks."""

    def __init__(self, config_path: Path, chain_id: str) -> None:
        self.config_path = config_path
        self.chain_id = chain_id
        self.attacker_keys = [CRYPTO.generate_private_key() for _ in range(3)]
        self.few_votes: set[bytes] = set()          # registered devices whose proof loses votes
        self.stale_cert: dict[bytes, bytes] = {}     # unregistered device -> key put in a forged record
        self.attacker_cert: dict[bytes, bytes] = {}
        self.forged: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.ports: list[int] = []
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> None:
        self.real = AsyncLedgerClient(self.config_path)
        self.servers = []
        for _ in range(self.real.config.n):
            srv = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self.servers.append(srv)
            self.ports.append(srv.sockets[0].getsockname()[1])

    def write_config(self, path: Path) -> Path:
        data = json.loads(self.config_path.read_text())
        data["nodes"] = [{"client_port": p} for p in self.ports]
        path.write_text(json.dumps(data))
        return path

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await read_frame(reader, 1 << 20)
                if data is None:
                    break
                asyncio.create_task(self._answer(cbor.loads(data), writer))
        except Exception:  # noqa: BLE001 - the peer went away
            pass
        finally:
            writer.close()

    async def _answer(self, req: dict, writer: asyncio.StreamWriter) -> None:
        rid, op = req.pop("id"), req.pop("op")
        wait = req.get("wait_ms", 0) / 1000
        try:
            resp = await self.real.request(op, timeout=wait + 5, **req)
        except Exception as exc:  # noqa: BLE001
            resp = {"ok": False, "error": str(exc)}
        resp = self.forge(op, req, resp)
        resp["id"] = rid
        writer.write(frame(cbor.dumps(resp)))

    def forge(self, op: str, req: dict, resp: dict) -> dict:
        if not resp.get("ok"):
            return resp
        if op == "latest":
            header, cert = resp["certified_header"]
            header = list(header)
            header[1] += 1000
            resp["certified_header"] = [header, forge_votes(header, self.chain_id, cert[1], self.attacker_keys)]
            resp["height"] = header[1]
            self.forged.append("latest")
        elif op == "record" and req.get("kind") == DEVICE_KIND:
            dev = req.get("record_id")
            proof = resp["proof"]
            header, cert = proof[1]
            if dev in self.few_votes:
                proof[1] = [header, [cert[0], cert[1], cert[2], cert[3][:2]]]
                self.forged.append("few-votes")
            elif dev in self.stale_cert or dev in self.attacker_cert:
                pub = self.stale_cert.get(dev) or self.attacker_cert[dev]
                record = cbor.dumps({1: dev, 2: pub, 3: 1, 4: {}, 5: 1, 6: now_ms(), 7: b"", 8: 1})
                key = spv.state_key(DEVICE_KIND, dev)
                tree = smt.SparseMerkleTree()
                tree.set(key, record)
                header = list(header)
                header[5] = tree.root()
                if dev in self.stale_cert:
                    forged_cert = cert                   # real votes, for the real header
                    self.forged.append("record-real-votes")
                else:
                    forged_cert = forge_votes(header, self.chain_id, cert[1], self.attacker_keys)
                    self.forged.append("record-attacker-votes")
                resp["proof"] = {1: [header, forged_cert], 2: key, 3: record, 4: smt.proof_to_cbor_obj(tree.prove(key))}
        return resp

    def close(self) -> None:
        async def stop() -> None:
            for s in self.servers:
                s.close()
            await self.real.close()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def evil(stack, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evil-gw")
    stack.register([Dev(stack).registration()])   # a first block: the gateway's start-up header fetch is answered
    lying = LyingLedger(stack.data_dir / "ledger" / "cluster.json", stack.chain_id)
    keys = stack.data_dir / "ledger" / "keys"
    stack.access.add("ll-gw-%s-1" % EVIL_SITE, "gateway", site=EVIL_SITE)
    cfg = {
        "site": EVIL_SITE,
        "mqtt": {"host": "127.0.0.1", "port": stack.broker_port, "client_id": "ll-gw-%s-1" % EVIL_SITE,
                 "credentials": str(stack.access.credentials_path("ll-gw-%s-1" % EVIL_SITE))},
        "store": str(tmp / "gateway.db"),
        "keys": {"identity": str(keys / "gateway.key"), "ca": str(keys / "gw-ca.key"), "site": str(keys / "gw-site.key")},
        "ledger": {"cluster": str(lying.write_config(tmp / "lying-cluster.json"))},
        "trust": {"chain_id": stack.chain_id, "validators": [k.hex() for k in stack.validators]},
        "limits": {"registry_timeout_ms": 1500},
        "batch": {"max": 64, "interval_ms": 50},
        "http": {"host": "127.0.0.1", "port": 0, "poll_s": 0.5},
    }
    (tmp / "gateway.json").write_text(json.dumps(cfg))
    log = tmp / "gateway.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "ledgerlink.gateway.main", "--config", str(tmp / "gateway.json")],
                                stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    net = None
    try:
        deadline = time.monotonic() + 30
        while b"subscribed" not in log.read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        url = re.search(r"dashboard on (http://\S+)", log.read_text()).group(1)
        net = Net(stack, EVIL_SITE, tmp / "gateway.db")
        yield {"proc": proc, "lying": lying, "net": net, "url": url, "log": log}
    finally:
        if net is not None:
            net.close()
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        lying.close()


def test_lying_ledger_node(stack, evil):
    net, lying, url = evil["net"], evil["lying"], evil["url"]
    good, few = Dev(stack, EVIL_SITE), Dev(stack, EVIL_SITE)
    stack.register([good.registration(), few.registration()])
    impostors = [Dev(stack, EVIL_SITE), Dev(stack, EVIL_SITE)]       # never registered
    lying.few_votes.add(few.id)
    lying.stale_cert[impostors[0].id] = impostors[0].pub
    lying.attacker_cert[impostors[1].id] = impostors[1].pub

    real_height = stack.height()
    net.wait(lambda: net.metric("ledgerlink_gateway_ignored_inputs_total", url) >= 0)
    net.assert_served(good)
    bad = [few.reading(), impostors[0].reading(), impostors[1].reading()]
    for d, f in zip([few] + impostors, bad):
        net.publish(d.up, f)
    for f in bad:                                   # no proof was taken: the frames time out for the registry
        net.assert_refused(f, c.LEDGER_UNAVAILABLE, timeout=15)
    assert {"few-votes", "record-real-votes", "record-attacker-votes", "latest"} <= set(lying.forged)
    assert net.metric("ledgerlink_gateway_ignored_inputs_total", url) >= 3
    text = evil["log"].read_text()
    for why in ("certificate has 2 votes, 3 needed", "certificate is not for this header",
                "vote of validator 0 does not verify"):
        assert "registry proof refused: " + why in text
    assert "ignored: certified header refused" in text                          # the forged latest at start-up
    state = json.loads(urllib.request.urlopen(url.rstrip("/") + "/api/state", timeout=5).read())
    assert state["ledger"]["error"] and state["ledger"]["gateway_header_height"] < real_height + 1000
    height = net.metric("ledgerlink_gateway_ledger_height", url)
    assert real_height <= height < real_height + 1000
    assert evil["proc"].poll() is None
    net.assert_served(good)                         # genuine answers still work
    assert net.refused_counts(url).get(c.LEDGER_UNAVAILABLE, 0) >= 3


def test_forged_retained_header(stack, net, register):
    (good,) = register(1)
    real = stack.ledger.latest()["certified_header"]
    header, cert = real
    ahead = list(header)
    ahead[1] += 1000
    attacker = [CRYPTO.generate_private_key() for _ in range(3)]
    forged = [
        [ahead, forge_votes(ahead, stack.chain_id, cert[1], attacker)],
        [header, [cert[0], cert[1], cert[2], cert[3][:2]]],               # too few signatures
    ]
    topic = "ll/%s/ledger/header" % stack.site
    for f in forged:
        net.attacker.publish(topic, cbor.dumps(f), qos=1, retain=True).wait_for_publish(5)
    net.assert_served(good, 2)
    before = net.metric("ledgerlink_gateway_ledger_height")
    assert before < ahead[1]

    def retained() -> Any:
        got: list[bytes] = []
        ev = threading.Event()
        client = net._client("header-reader-%d" % time.monotonic_ns())
        client.on_message = lambda c_, u, m: (got.append(bytes(m.payload)), ev.set())
        client.subscribe(topic, 1)
        ev.wait(3)
        client.disconnect()
        client.loop_stop()
        return got[0] if got else None

    def genuine() -> Any:
        raw = retained()
        if raw is None or raw in [cbor.dumps(f) for f in forged]:
            return None
        return spv.verify_certified_header(raw, stack.chain_id, stack.validators)

    h = net.wait(genuine, 15, "a genuine retained header")
    assert h.height < ahead[1]
    for f in forged:
        with pytest.raises(Exception):
            spv.verify_certified_header(cbor.dumps(f), stack.chain_id, stack.validators)
    assert stack.gateway.poll() is None
