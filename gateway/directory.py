"""The site's directory: device lookups with proofs, pair topics, and the relay of devices' own records.

A device publishes a ``dir-request`` on ``ll/S/dev/D/dir`` (the broker lets only D publish there, so the
topic says who asks) and gets a ``dir-answer`` on ``ll/S/dev/D/dira`` (docs/protocol.md, "Discovery"):

- by id / by attributes (type, capability, process step, line: any attributes recorded at registration):
  the registry records, each as a ``record-proof`` fetched from the ledger when asked; banned devices are
  never among the attribute matches, and a lookup by id of a banned device is answered "refused" with
  the proof that shows it (the device refuses it as a partner itself, ``discovery.partner``);
- pair: the pair topics of D and a partner P are granted on the broker (``pair_access``) when the ledger
  shows both registered and active; the answer carries P's proof;
- record: a communication or provenance record (or a device's), with its proof;
- history: what the ledger holds of a device that is offline: its record, its newest communication
  records and the lots it recorded, each with its proof;
- submit: a communication or provenance transaction the device signed itself, passed to the ledger
  (a relay that cannot alter it; the device checks the record's proof afterwards).

The directory follows the ledger's blocks (each checked against the trusted validators,
``proven_block_txs``) into an index of who is registered with which attributes, bans, lots and
communication records. The index only chooses which records to show; what is shown is always proven.
When a block bans a device, its pairs are revoked on the broker and each partner gets a ``dir-notice``
with the proof of the ban (``FOLLOW_S`` between looks at the ledger, so well within a second).
Tested in tests/m2m/ against a live site (4 ledger nodes, mosquitto and the embedded broker).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable

from ledgerlink.core import cbor, cose
from ledgerlink.core.errors import LedgerlinkError
from ledgerlink.protocol import discovery as dsc
from ledgerlink.protocol.codes import DEVICE_ID_LEN, RECORD_DEVICE, STATUS_ACTIVE
from ledgerlink.protocol.ledger_tx import (RECORD_COMMUNICATION, RECORD_PROVENANCE, TX_BAN, TX_COMMUNICATION,
                                           TX_PROVENANCE, TX_REGISTER, TX_UNBAN)

log = logging.getLogger(__name__)

FOLLOW_S = 0.1                  # the directory looks for new blocks this often
WORKERS = 4                     # requests answered at once (a submit waits for its commit)
HISTORY_ITEMS = 8               # communication records and lots in a history answer, each
RELAYED_TXS = (TX_COMMUNICATION, TX_PROVENANCE)
RECORD_KINDS = (RECORD_DEVICE, RECORD_COMMUNICATION, RECORD_PROVENANCE)


class DirectoryIndex:
    """What the followed blocks said: devices and their attributes, who is banned, lots, communications."""

    def __init__(self) -> None:
        self.attributes: dict[bytes, dict] = {}
        self.banned: set[bytes] = set()
        self.lots_by: dict[bytes, list[bytes]] = {}
        self.comms_of: dict[bytes, list[list[bytes]]] = {}
        self.height = -1                # the last block taken in (blocks count from 0)

    def apply(self, height: int, txs: list[bytes]) -> list[bytes]:
        """Take in block ``height``; the devices it bans."""
        bans = []
        for tx in txs:
            try:
                msg = cose.decode_sign1(tx)
                body = cbor.loads(msg.payload)
                kind = body[1]
                if kind == TX_REGISTER:
                    req = cbor.loads(cose.decode_sign1(body[4]).payload)
                    if isinstance(req.get(4), dict) and isinstance(req.get(1), bytes):
                        self.attributes[req[1]] = req[4]
                elif kind in (TX_BAN, TX_UNBAN) and isinstance(body[4], bytes):
                    if kind == TX_BAN:
                        self.banned.add(body[4])
                        bans.append(body[4])
                    else:
                        self.banned.discard(body[4])
                elif kind == TX_PROVENANCE and isinstance(body[4], bytes):
                    self.lots_by.setdefault(msg.kid, []).append(body[4])
                elif kind == TX_COMMUNICATION and isinstance(body[4], bytes) and isinstance(body[5], bytes):
                    rid = [body[4], body[8]]
                    for party in (body[4], body[5]):
                        self.comms_of.setdefault(party, []).append(rid)
            except (LedgerlinkError, KeyError, TypeError, IndexError, AttributeError):
                continue
        self.height = height
        return bans

    def find(self, wanted: dict) -> list[bytes]:
        """Devices not known banned whose attributes hold ``wanted`` (at most ``MAX_RESULTS``)."""
        return [dev for dev, attrs in self.attributes.items()
                if dev not in self.banned and dsc.matches(attrs, wanted)][:dsc.MAX_RESULTS]


class Directory:
    """Answers ``dir-request``s from the ledger (``ledger``: a LedgerClient) for site ``site``;
    ``pairs``: a ``PairAccess`` (None: pair requests are refused)."""

    def __init__(self, ledger: Any, chain_id: str, validators: list[bytes], site: str, pairs: Any = None,
                 group_key: bytes | None = None) -> None:
        self.ledger = ledger
        self.chain_id = chain_id
        self.validators = validators
        self.group_key = group_key      # the set's FROST group key, when its headers name one
        self.site = site
        self.pairs = pairs
        self.index = DirectoryIndex()
        self._bans: list[bytes] = []
        self._lock = threading.Lock()

    def proof(self, kind: int, record_id: Any) -> dict:
        res = self.ledger.record(kind, record_id)
        if not res.get("ok"):
            raise LedgerlinkError("ledger: %s" % res.get("error"))
        return res["proof"]

    def device(self, dev: bytes) -> tuple[dict, dsc.DeviceRecord | None]:
        """(proof, proven record or None) of a device; raises DiscoveryError when the ledger's answer lies."""
        proof = self.proof(RECORD_DEVICE, dev)
        return proof, dsc.device_record(proof, self.chain_id, self.validators, dev, group_key=self.group_key)

    def catch_up(self) -> None:
        """Take in the blocks committed since the last call (their bans wait for ``follow``)."""
        from ledgerlink.tools.broker_access import proven_block_txs

        with self._lock:
            latest = self.ledger.latest()
            top = int(latest["height"]) if latest.get("ok") else -1        # no block yet
            while self.index.height < top:
                height = self.index.height + 1
                self._bans += self.index.apply(height, proven_block_txs(self.ledger, self.chain_id,
                                                                        self.validators, height, self.group_key))

    def follow(self) -> list[bytes]:
        """``catch_up``; the devices banned since the last call (proven banned now). A ban seen before a
        failure (a node not answering) is returned by the next call."""
        self.catch_up()
        banned = []
        while self._bans:
            rec = self.device(self._bans[0])[1]
            dev = self._bans.pop(0)
            if rec is not None and rec.banned:
                banned.append(dev)
        return banned

    def handle(self, requester: bytes, data: bytes) -> bytes:
        """The ``dir-answer`` to one request from ``requester`` (never raises on a bad request)."""
        try:
            request_id, op, arg = dsc.decode_request(data)
        except dsc.DiscoveryError as exc:
            return dsc.encode_answer(0, dsc.DIR_REFUSED, text=str(exc))
        try:
            return self._answer(requester, request_id, op, arg)
        except dsc.DiscoveryError as exc:
            return dsc.encode_answer(request_id, dsc.DIR_UNAVAILABLE, text="the ledger's answer does not verify: %s"
                                     % exc)
        except Exception as exc:  # noqa: BLE001 - a ledger that does not answer: the device may ask again
            return dsc.encode_answer(request_id, dsc.DIR_UNAVAILABLE, text="%s: %s" % (type(exc).__name__, exc))

    def _answer(self, requester: bytes, request_id: int, op: int, arg: Any) -> bytes:
        answer = dsc.encode_answer
        if op in (dsc.DIR_BY_ATTRIBUTES, dsc.DIR_HISTORY):
            self.catch_up()                 # what the ledger committed before the request is in the index
        if op in (dsc.DIR_BY_ID, dsc.DIR_PAIR, dsc.DIR_HISTORY):
            if not isinstance(arg, bytes) or len(arg) != DEVICE_ID_LEN:
                return answer(request_id, dsc.DIR_REFUSED, text="the argument must be a 16-byte device id")
            proof, rec = self.device(arg)
            if rec is None:
                return answer(request_id, dsc.DIR_NOT_FOUND, [proof], "device is not registered")
            if op == dsc.DIR_HISTORY:
                ids, proofs = self._history(arg)
                return answer(request_id, dsc.DIR_OK, [proof] + proofs, ids=[[RECORD_DEVICE, arg]] + ids)
            if rec.status != STATUS_ACTIVE:
                return answer(request_id, dsc.DIR_REFUSED, [proof], "device is banned")
            if op == dsc.DIR_PAIR:
                own = self.device(requester)[1]
                if own is None or own.status != STATUS_ACTIVE or arg == requester:
                    return answer(request_id, dsc.DIR_REFUSED, [proof], "the requester may not have partners")
                if self.pairs is None or not self.pairs.grant(requester, arg):
                    return answer(request_id, dsc.DIR_REFUSED, [proof], "no broker account for this pair")
            return answer(request_id, dsc.DIR_OK, [proof])
        if op == dsc.DIR_BY_ATTRIBUTES:
            if not isinstance(arg, dict) or not arg:
                return answer(request_id, dsc.DIR_REFUSED, text="the argument must be a map of attributes")
            proofs = []
            for dev in self.index.find(arg):
                proof, rec = self.device(dev)
                if rec is not None and rec.status == STATUS_ACTIVE and dsc.matches(rec.attributes, arg):
                    proofs.append(proof)
            return answer(request_id, dsc.DIR_OK if proofs else dsc.DIR_NOT_FOUND, proofs)
        if op == dsc.DIR_RECORD:
            if not isinstance(arg, list) or len(arg) != 2 or arg[0] not in RECORD_KINDS:
                return answer(request_id, dsc.DIR_REFUSED, text="the argument must be [record-kind, record-id]")
            proof = self.proof(arg[0], arg[1])
            return answer(request_id, dsc.DIR_OK if proof.get(3) is not None else dsc.DIR_NOT_FOUND, [proof])
        return self._submit(requester, request_id, arg)

    def _history(self, dev: bytes) -> tuple[list[list], list[dict]]:
        ids = [[RECORD_COMMUNICATION, rid] for rid in self.index.comms_of.get(dev, [])[-HISTORY_ITEMS:]]
        ids += [[RECORD_PROVENANCE, lot] for lot in self.index.lots_by.get(dev, [])[-HISTORY_ITEMS:]]
        return ids, [self.proof(kind, rid) for kind, rid in ids]

    def _submit(self, requester: bytes, request_id: int, tx: Any) -> bytes:
        answer = dsc.encode_answer
        try:
            msg = cose.decode_sign1(tx)
            kind = cbor.loads(msg.payload)[1]
        except (LedgerlinkError, TypeError, KeyError, IndexError):
            return answer(request_id, dsc.DIR_REFUSED, text="the argument must be a signed transaction")
        if msg.kid != requester or kind not in RELAYED_TXS:
            return answer(request_id, dsc.DIR_REFUSED,
                          text="only the requester's own communication and provenance transactions are relayed")
        res = self.ledger.submit(tx)
        result = {1: res.get("status", "unknown"), 2: int(res.get("code") or 0)}
        if "height" in res:
            result[3] = res["height"]
        ok = res.get("status") == "committed" and not res.get("code")
        return answer(request_id, dsc.DIR_OK if ok else dsc.DIR_REFUSED, result=result,
                      text=None if ok else str(res.get("reason") or res.get("error") or res.get("status")))

    def ban_notices(self, dev: bytes) -> list[tuple[bytes, bytes]]:
        """(partner, dir-notice) for each partner of a banned ``dev``, its pairs revoked on the broker."""
        partners = self.pairs.revoke_device(dev) if self.pairs is not None else []
        if not partners:
            return []
        notice = dsc.encode_answer(0, dsc.DIR_OK, [self.proof(RECORD_DEVICE, dev)], notice=dsc.DIR_NOTICE_BANNED)
        return [(peer, notice) for peer in partners]


class DirectoryService:
    """A ``Directory`` on the site's broker: one MQTT client (paho, the directory's account), ``WORKERS``
    threads that answer requests and one that follows the ledger."""

    def __init__(self, directory: Directory, host: str, port: int, login: dict[str, str],
                 on_ban: Callable[[bytes, float], None] | None = None) -> None:
        import paho.mqtt.client as mqtt

        self.directory = directory
        self.on_ban = on_ban
        self._requests: queue.Queue = queue.Queue(maxsize=1024)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=login["username"], protocol=mqtt.MQTTv5)
        self.client.username_pw_set(login["username"], login["password"])
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._ready.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self._threads = [threading.Thread(target=self._serve, daemon=True) for _ in range(WORKERS)]
        self._threads.append(threading.Thread(target=self._follow, daemon=True))

    def start(self, timeout: float = 10.0) -> "DirectoryService":
        self.client.loop_start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the directory did not subscribe within %.0f s" % timeout)
        self.directory.follow()
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for _ in range(WORKERS):
            self._requests.put(None)
        for t in self._threads:
            t.join(timeout=5)
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not reason.is_failure:
            client.subscribe("ll/%s/dev/+/dir" % self.directory.site, qos=1)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        parts = msg.topic.split("/")
        try:
            requester = bytes.fromhex(parts[3])
        except (ValueError, IndexError):
            return
        try:
            self._requests.put_nowait((requester, bytes(msg.payload)))
        except queue.Full:
            log.warning("directory: request of %s dropped (queue full)", parts[3])

    def _serve(self) -> None:
        while True:
            item = self._requests.get()
            if item is None:
                return
            requester, data = item
            answer = self.directory.handle(requester, data)
            self.client.publish(dsc.answer_topic(self.directory.site, requester), answer, qos=1)

    def _follow(self) -> None:
        while not self._stop.wait(FOLLOW_S):
            try:
                for dev in self.directory.follow():
                    for peer, notice in self.directory.ban_notices(dev):
                        self.client.publish(dsc.answer_topic(self.directory.site, peer), notice, qos=1)
                    if self.on_ban is not None:
                        self.on_ban(dev, time.monotonic())
            except Exception as exc:  # noqa: BLE001 - the ledger may be down for a while: look again
                log.warning("directory: following the ledger: %s", exc)


def main(argv: list[str] | None = None) -> int:
    """``python3 -m ledgerlink.gateway.directory --up-config UP.json`` (or ``--data-dir DIR --site S --broker
    HOST:PORT``, as ``ledgerlink up`` starts it): the directory of a running site (its ledger config in
    ``DIR/ledger/cluster.json``, its broker accounts in ``DIR/broker``), until SIGTERM or Ctrl-C."""
    import argparse
    import signal
    from pathlib import Path

    from ledgerlink.ledger.client import LedgerClient
    from ledgerlink.ledger.transport import ClusterConfig
    from ledgerlink.tools.broker_access import SiteAccess
    from ledgerlink.tools.pair_access import PairAccess

    parser = argparse.ArgumentParser(prog="python3 -m ledgerlink.gateway.directory", description=main.__doc__)
    parser.add_argument("--up-config", metavar="FILE", help="the `ledgerlink up` config")
    parser.add_argument("--data-dir", metavar="DIR", help="the site's data directory (instead of --up-config)")
    parser.add_argument("--site", help="the site's name (with --data-dir)")
    parser.add_argument("--broker", metavar="HOST:PORT", help="the site's broker (with --data-dir)")
    args = parser.parse_args(argv)
    if args.up_config:
        from ledgerlink.tools.up import load_config

        cfg = load_config(args.up_config)
        data_dir, site = cfg.data_dir, cfg.site
        host, port = cfg.broker_external or (cfg.broker_host, cfg.broker_port)
    elif args.data_dir and args.site and args.broker:
        data_dir, site = Path(args.data_dir), args.site
        host, _, port_text = args.broker.rpartition(":")
        port = int(port_text)
    else:
        parser.error("give --up-config, or --data-dir, --site and --broker")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    cluster = ClusterConfig.load(data_dir / "ledger" / "cluster.json")
    ledger = LedgerClient(cluster)
    pairs = PairAccess(SiteAccess(data_dir / "broker", site))
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    service = None
    try:
        group = cluster.genesis.get("group_key")
        service = DirectoryService(Directory(ledger, cluster.chain_id, list(cluster.validators), site, pairs,
                                             bytes.fromhex(group) if group else None),
                                   host, port, pairs.directory_login()).start()
        print("directory of site %s on %s:%d (ledger height %d)" % (site, host, port, service.directory.index.height),
              flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        if service is not None:
            service.stop()
        ledger.close()


if __name__ == "__main__":
    raise SystemExit(main())
