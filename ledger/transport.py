"""TCP transport of the ledger nodes: cluster configuration, framing, peer links and the client port.

Frames are a 4-byte big-endian length followed by that many bytes. A length above the limit, a
truncated frame or an undecodable client request is dropped with a logged reason and the connection
closed (framing cannot resynchronise); it never stops the node. Peer links carry PBFT messages: each
node dials every other node (one outbound connection per peer, reconnected with exponential backoff)
and opens with a hello frame ``cbor(["ledgerlink-peer-v1", chain-id, index])``. The hello is not
authentication: every PBFT message is signed and the replica checks that its signer is the sender
named here, so a forged hello only lets a host relay messages that it could replay anyway.

The client port speaks CBOR requests ``{"id": uint, "op": tstr, ...}`` answered by
``{"id": uint, "ok": bool, ...}``; requests on one connection may be pipelined and answers may come
out of order. Tested in tests/ledger/test_node_transport.py (framing limits, junk, reconnect).
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

from ledgerlink.core import cbor
from ledgerlink.core.errors import LedgerlinkError
from ledgerlink.ledger.consensus.replica import Config

log = logging.getLogger("ledgerlink.transport")

HELLO = "ledgerlink-peer-v1"
DEFAULT_BASE_PORT = 26600
CLIENT_PORT_OFFSET = 1000
MAX_CLIENT_FRAME = 1 << 20
_LEN = struct.Struct(">I")


class FrameError(Exception):
    """A frame that breaks the framing rules; ``reason`` is logged."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- cluster configuration ----------------------------------------------------------------------

@dataclass
class NodeAddress:
    """Where validator ``index`` listens, its public key and (for local clusters) its key file."""

    index: int
    host: str
    peer_port: int
    client_port: int
    pubkey: bytes
    key_file: str | None = None


@dataclass
class ClusterConfig:
    """A cluster configuration file (JSON or TOML).

    Fields: ``chain_id``; ``validators`` (hex public keys, index order); optional ``host``
    (default 127.0.0.1), ``base_port`` (peer port of node i is base_port + i; client port
    base_port + 1000 + i), ``nodes`` (per-node overrides ``{host, peer_port, client_port, key_file}``),
    ``genesis`` (the ``LedgerState.genesis`` config with keys as hex) and ``consensus`` (fields of
    ``replica.Config``).
    """

    chain_id: str
    nodes: list[NodeAddress]
    genesis: dict[str, Any]
    consensus: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @classmethod
    def load(cls, path: str | Path) -> "ClusterConfig":
        p = Path(path)
        raw = p.read_bytes()
        if p.suffix == ".toml":
            import tomllib
            data = tomllib.loads(raw.decode())
        else:
            data = json.loads(raw)
        return cls.from_dict(data, p)

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: Path | None = None) -> "ClusterConfig":
        chain_id = data["chain_id"]
        keys = [bytes.fromhex(k) for k in data["validators"]]
        host = data.get("host", "127.0.0.1")
        base = int(data.get("base_port", DEFAULT_BASE_PORT))
        overrides = data.get("nodes", [])
        nodes = []
        for i, key in enumerate(keys):
            o = overrides[i] if i < len(overrides) else {}
            key_file = o.get("key_file")
            if key_file is not None and path is not None and not Path(key_file).is_absolute():
                key_file = str(path.parent / key_file)
            nodes.append(NodeAddress(i, o.get("host", host), int(o.get("peer_port", base + i)),
                                     int(o.get("client_port", base + CLIENT_PORT_OFFSET + i)), key,
                                     key_file))
        return cls(chain_id, nodes, dict(data.get("genesis", {})), dict(data.get("consensus", {})), path)

    @property
    def n(self) -> int:
        return len(self.nodes)

    @property
    def validators(self) -> tuple[bytes, ...]:
        return tuple(a.pubkey for a in self.nodes)

    def replica_config(self) -> Config:
        return Config(chain_id=self.chain_id, validators=self.validators, **self.consensus)

    def genesis_config(self) -> dict[str, Any]:
        """The genesis config for ``LedgerState.genesis`` with hex keys turned into bytes."""
        g = dict(self.genesis)
        g["chain_id"] = self.chain_id
        g["validators"] = list(self.validators)
        for name in ("admins", "devices"):
            out = []
            for e in g.get(name, []):
                if isinstance(e, str):
                    out.append(bytes.fromhex(e))
                else:
                    e = dict(e)
                    e["key"] = bytes.fromhex(e["key"])
                    out.append(e)
            g[name] = out
        return g

    def genesis_hash(self) -> bytes:
        import hashlib
        return hashlib.sha256(json.dumps(
            {"chain_id": self.chain_id, "validators": [k.hex() for k in self.validators],
             "genesis": self.genesis}, sort_keys=True).encode()).digest()


# --- framing ------------------------------------------------------------------------------------

def frame(data: bytes) -> bytes:
    return _LEN.pack(len(data)) + data


async def read_frame(reader: asyncio.StreamReader, max_size: int) -> bytes | None:
    """The next frame, or None at a clean end of stream; FrameError on a bad one."""
    try:
        head = await reader.readexactly(4)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise FrameError("truncated length") from None
        return None
    (length,) = _LEN.unpack(head)
    if length > max_size:
        raise FrameError("frame of %d bytes exceeds the %d-byte limit" % (length, max_size))
    try:
        return await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise FrameError("truncated frame") from None


class FrameSplitter:
    """Frames cut out of a stream read in chunks: the same frames and errors as ``read_frame``
    called once per frame, with one read per chunk instead of two per frame."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._buf = bytearray()
        self.error: FrameError | None = None

    def feed(self, chunk: bytes) -> list[bytes]:
        """The frames completed by ``chunk``; ``error`` is set when a frame after them breaks the limit."""
        buf = self._buf
        buf += chunk
        out = []
        pos = 0
        end = len(buf)
        while end - pos >= 4:
            (length,) = _LEN.unpack_from(buf, pos)
            if length > self.max_size:
                self.error = FrameError("frame of %d bytes exceeds the %d-byte limit" % (length, self.max_size))
                break
            if end - pos - 4 < length:
                break
            out.append(bytes(buf[pos + 4:pos + 4 + length]))
            pos += 4 + length
        del buf[:pos]
        return out

    def end(self) -> None:
        """At the end of the stream: FrameError if it stopped inside a frame."""
        if self._buf:
            raise FrameError("truncated length" if len(self._buf) < 4 else "truncated frame")


def _close(writer: asyncio.StreamWriter) -> None:
    try:
        writer.close()
    except Exception:
        pass


# --- peer links ---------------------------------------------------------------------------------

class _Outbound:
    """One dialled connection to a peer with a bounded queue (oldest frames dropped when full)."""

    def __init__(self, net: "PeerNetwork", peer: NodeAddress) -> None:
        self.net = net
        self.peer = peer
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.limit = 20000
        self.task: asyncio.Task | None = None
        self.connected = False

    def put(self, data: bytes) -> None:
        if self.queue.qsize() >= self.limit:
            self.queue.get_nowait()
        self.queue.put_nowait(data)

    async def run(self) -> None:
        delay = 0.05
        while True:
            try:
                reader, writer = await asyncio.open_connection(self.peer.host, self.peer.peer_port)
            except OSError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            delay = 0.05
            self.connected = True
            log.info("connected to peer %d", self.peer.index)
            try:
                writer.write(frame(cbor.dumps([HELLO, self.net.chain_id, self.net.index])))
                while True:
                    data = await self.queue.get()
                    chunks = [frame(data)]
                    while not self.queue.empty() and len(chunks) < 256:
                        chunks.append(frame(self.queue.get_nowait()))
                    writer.write(b"".join(chunks))
                    await writer.drain()
            except (OSError, ConnectionError) as exc:
                log.info("link to peer %d lost: %s", self.peer.index, exc)
            finally:
                self.connected = False
                _close(writer)
            await asyncio.sleep(delay)


class PeerNetwork:
    """Listens for peers and keeps an outbound link to each; calls ``on_message(sender, data)``."""

    def __init__(self, config: ClusterConfig, index: int, max_frame: int,
                 on_message: Callable[[int, bytes], None]) -> None:
        self.chain_id = config.chain_id
        self.index = index
        self.config = config
        self.max_frame = max_frame
        self.on_message = on_message
        self.links = {a.index: _Outbound(self, a) for a in config.nodes if a.index != index}
        self.server: asyncio.base_events.Server | None = None
        self.inbound: set[asyncio.StreamWriter] = set()
        self.dropped = 0

    async def start(self) -> None:
        me = self.config.nodes[self.index]
        self.server = await asyncio.start_server(self._serve, me.host, me.peer_port)
        for link in self.links.values():
            link.task = asyncio.create_task(link.run())

    async def stop(self) -> None:
        for link in self.links.values():
            if link.task is not None:
                link.task.cancel()
        if self.server is not None:
            self.server.close()
        for w in list(self.inbound):
            _close(w)

    def send(self, to: int, data: bytes) -> None:
        link = self.links.get(to)
        if link is not None:
            link.put(data)

    def broadcast(self, data: bytes) -> None:
        for link in self.links.values():
            link.put(data)

    def _drop(self, peer: Any, reason: str) -> None:
        self.dropped += 1
        log.warning("dropped frame from %s: %s", peer, reason)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        self.inbound.add(writer)
        try:
            hello = await read_frame(reader, 256)
            if hello is None:
                return
            try:
                h = cbor.loads(hello)
            except LedgerlinkError:
                h = None
            if (not isinstance(h, list) or len(h) != 3 or h[0] != HELLO or h[1] != self.chain_id
                    or type(h[2]) is not int or not 0 <= h[2] < self.config.n or h[2] == self.index):
                self._drop(peer, "bad hello")
                return
            sender = h[2]
            while True:
                data = await read_frame(reader, self.max_frame)
                if data is None:
                    return
                self.on_message(sender, data)
        except FrameError as exc:
            self._drop(peer, exc.reason)
        except (OSError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.inbound.discard(writer)
            _close(writer)


# --- client port ----------------------------------------------------------------------------------

Handler = Callable[[dict], Awaitable[dict]]
MAX_REPLY_BUFFER = 1 << 20
READ_CHUNK = 1 << 16


class _Replies:
    """The answers due on one client connection, written together once per event-loop turn."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.chunks: list[bytes] = []

    def add(self, data: bytes) -> None:
        if not self.chunks:
            asyncio.get_running_loop().call_soon(self.flush)
        self.chunks.append(data)

    def flush(self) -> None:
        chunks, self.chunks = self.chunks, []
        if chunks and not self.writer.is_closing():
            self.writer.write(b"".join(chunks))


class ClientServer:
    """Serves CBOR requests on the client port; ``handler(request) -> response`` (``id`` added here)."""

    def __init__(self, host: str, port: int, handler: Handler, max_frame: int = MAX_CLIENT_FRAME) -> None:
        self.host = host
        self.port = port
        self.handler = handler
        self.max_frame = max_frame
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, self.host, self.port)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        tasks: set[asyncio.Task] = set()
        replies = _Replies(writer)
        frames = FrameSplitter(self.max_frame)
        try:
            while True:
                chunk = await reader.read(READ_CHUNK)
                if not chunk:
                    frames.end()
                    return
                for data in frames.feed(chunk):
                    try:
                        req = cbor.loads(data)
                    except LedgerlinkError:
                        req = None
                    if not isinstance(req, dict) or type(req.get("id")) is not int \
                            or not isinstance(req.get("op"), str):
                        log.warning("dropped client request from %s: malformed", peer)
                        writer.write(frame(cbor.dumps({"ok": False, "error": "malformed request"})))
                        continue
                    t = asyncio.create_task(self._answer(req, writer, replies))
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
                if frames.error is not None:
                    raise frames.error
        except FrameError as exc:
            log.warning("dropped client frame from %s: %s", peer, exc.reason)
        except (OSError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            for t in tasks:
                t.cancel()
            _close(writer)

    async def _answer(self, req: dict, writer: asyncio.StreamWriter, replies: _Replies) -> None:
        try:
            resp = await self.handler(req)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("client request %r failed", req.get("op"))
            resp = {"ok": False, "error": "internal error: %s" % type(exc).__name__}
        resp["id"] = req["id"]
        replies.add(frame(cbor.dumps(resp)))
        try:
            if writer.transport.get_write_buffer_size() > MAX_REPLY_BUFFER:
                await writer.drain()
        except (OSError, ConnectionError):
            pass
