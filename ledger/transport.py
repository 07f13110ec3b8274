"""TCP transport of the ledger nodes: cluster configuration, framing, peer links and the client port.

Frames are a 4-byte big-endian length followed by that many bytes. A length above the limit, a
truncated frame or an undecodable client request is dropped with a logged reason and the connection
closed (framing cannot resynchronise); it never stops the node.

Peer links carry PBFT messages: each node dials every other node (one outbound connection per peer,
reconnected with exponential backoff). Before any other frame, the two ends prove their validator
keys (``handshake_dial``/``handshake_accept``, CDDL in docs/protocol.md): each sends a hello with a
fresh 32-byte nonce, then each signs (ECDSA P-256, its validator key) the chain id, both indices,
both nonces and its role; the listener answers the dialer's hello only with a nonce, checks the
dialer's signature before it signs anything itself, and reads no frame beyond the hello until it
holds. A connection that fails or stalls in the handshake is closed within ``handshake_timeout_s``.
This keeps strangers from reaching the CBOR decoder and the replica at all (a keyless host sending
4 MB non-canonical frames halved the block rate); the PBFT messages stay signed one by one, so a
host on the path that injects frames into an authenticated stream gets only as far as the replica's
signature check (mutual TLS would add that protection and confidentiality, at the price of a
certificate authority for the validators; validators' traffic is not secret).

Every resource a connection can hold is bounded (``PortLimits``, each limit counted in ``limited``
when it bites): new connections in total on each port (``peer_accept_rate``,
``client_accept_rate``; beyond it a connection is reset as it is accepted, before any stream or task
exists, so a connect flood from many addresses costs an accept and a reset each; meter it in the
host's firewall as well, see docs/ledger-operations.md); handshakes at once in total and per
address and their rate per address; one authenticated inbound connection per peer (a newer one
replaces it); per peer and message kind a token bucket (``fetch-blocks`` 20/s, everything else
2000/s) checked on the kind read from the frame's first bytes, before the frame is decoded; a
peer's ``fetch-blocks`` is dropped undecoded while more than ``peer_fetch_backlog_bytes`` wait to
reach it (our queue, the stream buffer and the kernel's send queue), so a peer that asks and does
not read gets no more answers encoded and signed for it, and what it finds waiting when it reads
again is one backlog, not everything its asking earned; a partial frame must complete within
``peer_frame_timeout_s``; each outbound queue holds at most ``peer_queue_bytes`` and a peer that
lets more pile up (it does not read) is cut off, its queue dropped (it catches up by fetching
blocks) rather than the node growing.

The client port speaks CBOR requests ``{"id": uint, "op": tstr, ...}`` answered by
``{"id": uint, "ok": bool, ...}``; requests on one connection may be pipelined and answers may come
out of order. Its limits: connections in total and per address (when full, the oldest connection
that has not completed a request yet is closed to make room, so strangers holding half-sent frames
cannot lock clients out), bytes of partial frames per connection (``max_frame``) and per node
(the oldest partial frame is cut first), a time limit for a started frame and for an idle
connection, a size cap per operation read from the request's first bytes before it is decoded,
per-address token buckets on new connections (refused beyond), requests and bytes read (reading
pauses when one is empty), requests in flight per connection, and reply bytes a client leaves unread (reading pauses; a client that reads nothing for
``client_write_timeout_s`` is cut off). Tested in tests/ledger/test_node_transport.py (framing,
handshake, reconnect) and tests/ledger/test_port_limits.py (node processes under each attack).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import fcntl
import json
import logging
import os
import struct
import termios
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

from ledgerlink.core import cbor
from ledgerlink.core.backend import get_backend
from ledgerlink.core.errors import LedgerlinkError
from ledgerlink.ledger.consensus.messages import FETCH_BLOCKS, KIND_NAMES
from ledgerlink.ledger.consensus.replica import Config

log = logging.getLogger("ledgerlink.transport")

HELLO = "ledgerlink-peer-v2"
PEER_AUTH_DOMAIN = "ledgerlink-peer-auth-v2"
NONCE_SIZE = 32
MAX_HELLO_FRAME = 256
DEFAULT_BASE_PORT = 26600
CLIENT_PORT_OFFSET = 1000
MAX_CLIENT_FRAME = 1 << 20
READ_CHUNK = 1 << 16
_LEN = struct.Struct(">I")


@dataclass(frozen=True)
class PortLimits:
    """Limits of a node's peer and client ports (times in seconds, rates per second); the
    ``ports`` section of a cluster config overrides them."""

    handshake_timeout_s: float = 2.0
    max_handshakes: int = 32
    max_handshakes_per_address: int = 8
    handshake_rate: float = 20.0          # per address; burst the same
    peer_frame_timeout_s: float = 10.0
    peer_queue_bytes: int = 16 << 20
    peer_write_timeout_s: float = 10.0
    fetch_rate: float = 20.0              # fetch-blocks per peer; burst twice that
    peer_fetch_backlog_bytes: int = 1 << 20   # a peer's fetch-blocks is dropped while this much waits to reach it
    peer_message_rate: float = 2000.0     # every other kind, per peer and kind; burst twice that
    client_max_connections: int = 256
    client_max_per_address: int = 64
    client_buffered_bytes: int = 8 << 20
    client_frame_timeout_s: float = 5.0
    client_idle_timeout_s: float = 120.0
    client_request_rate: float = 5000.0   # per address; burst twice that
    client_bytes_rate: float = 16 << 20   # bytes read per address; burst twice that
    client_connect_rate: float = 100.0    # new connections per address; burst twice that
    client_accept_rate: float = 1000.0    # new connections in total; burst twice that
    peer_accept_rate: float = 200.0       # new peer port connections in total; burst twice that
    client_max_in_flight: int = 2048      # per connection
    client_write_timeout_s: float = 10.0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PortLimits":
        names = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = set(data) - set(names)
        if unknown:
            raise ValueError("unknown port limits: %s" % ", ".join(sorted(unknown)))
        return cls(**{k: (float(v) if names[k] == "float" else int(v)) for k, v in data.items()})


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, n: float = 1.0) -> bool:
        """Take ``n`` tokens if there are that many."""
        if self.tokens < n:
            self._refill()
            if self.tokens < n:
                return False
        self.tokens -= n
        return True

    def spend(self, n: float) -> float:
        """Take ``n`` tokens, going into debt if there are fewer; the seconds until the debt is paid."""
        self._refill()
        self.tokens -= n
        return max(0.0, -self.tokens / self.rate)


class _Buckets:
    """Token buckets by key (addresses), the least recently used dropped beyond ``size``."""

    def __init__(self, rate: float, burst: float, size: int = 4096) -> None:
        self.rate = rate
        self.burst = burst
        self.size = size
        self._by_key: collections.OrderedDict[Any, TokenBucket] = collections.OrderedDict()

    def get(self, key: Any) -> TokenBucket:
        b = self._by_key.get(key)
        if b is None:
            b = self._by_key[key] = TokenBucket(self.rate, self.burst)
            if len(self._by_key) > self.size:
                self._by_key.popitem(last=False)
        else:
            self._by_key.move_to_end(key)
        return b


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
    ``genesis`` (the ``LedgerState.genesis`` config with keys as hex), ``consensus`` (fields of
    ``replica.Config``) and ``ports`` (fields of ``PortLimits``). Validators added later by a set change
    are not in it (its validator list is part of the genesis hash): their addresses come from the
    peers file (``load_peer_addresses``) and are appended to ``nodes`` when the set grows.
    """

    chain_id: str
    nodes: list[NodeAddress]
    genesis: dict[str, Any]
    consensus: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    ports: PortLimits = field(default_factory=PortLimits)
    peers_file: Path | None = None       # addresses of validators added after genesis (``default_peers_file``)

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
        return cls(chain_id, nodes, dict(data.get("genesis", {})), dict(data.get("consensus", {})), path,
                   PortLimits.from_dict(dict(data.get("ports", {}))))

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


# --- addresses of validators added after genesis -------------------------------------------------

#: the operator's file of addresses of validators added by a set change, beside the cluster config
PEERS_FILE = "peers.json"


def default_peers_file(config: ClusterConfig) -> Path:
    """The config's ``peers_file`` (a node's ``--peers``), else ``peers.json`` in the cluster config's
    directory (the working directory without a config path)."""
    if config.peers_file is not None:
        return config.peers_file
    return (config.path.parent if config.path is not None else Path(".")) / PEERS_FILE


def _key_hex(key: bytes) -> str:
    from ledgerlink.protocol.ledger_tx import compress_pubkey
    return compress_pubkey(key).hex()


def load_peer_addresses(path: str | Path) -> dict[str, tuple[str, int, int]]:
    """The peers file: a JSON object mapping a validator's public key (compressed, hex) to
    ``{host, peer_port, client_port}``; an absent file names none. ValueError if it is malformed.

    The address is not trusted: the key comes from the set change certified by the ledger, and a
    peer proves it in the handshake, so a wrong address only keeps the link from forming."""
    p = Path(path)
    if not p.exists():
        return {}
    data = json.loads(p.read_text())
    if not isinstance(data, dict):
        raise ValueError("%s: not a JSON object" % p)
    out = {}
    for key, a in data.items():
        try:
            host, peer_port, client_port = a["host"], a["peer_port"], a["client_port"]
        except (TypeError, KeyError):
            raise ValueError("%s: %s needs host, peer_port and client_port" % (p, key)) from None
        if (not isinstance(host, str) or type(peer_port) is not int or type(client_port) is not int
                or not 0 < peer_port < 65536 or not 0 < client_port < 65536):
            raise ValueError("%s: bad address of %s" % (p, key))
        try:
            out[_key_hex(bytes.fromhex(key))] = (host, peer_port, client_port)
        except (ValueError, LedgerlinkError):
            raise ValueError("%s: %r is not a P-256 public key in hex" % (p, key)) from None
    return out


def write_peer_address(path: str | Path, key: bytes, host: str, peer_port: int, client_port: int) -> None:
    """Name validator ``key``'s address in the peers file (other entries kept; written atomically)."""
    p = Path(path)
    data = json.loads(p.read_text()) if p.exists() else {}
    data[_key_hex(key)] = {"host": host, "peer_port": peer_port, "client_port": client_port}
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, p)


def added_address(index: int, key: bytes, peers_file: str | Path) -> NodeAddress | None:
    """Validator ``index`` (beyond the cluster config's) with ``key`` at its peers-file address, or None."""
    found = load_peer_addresses(peers_file).get(_key_hex(key))
    return None if found is None else NodeAddress(index, found[0], found[1], found[2], key)


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

    @property
    def pending(self) -> int:
        """Bytes held of a frame not yet complete."""
        return len(self._buf)

    def end(self) -> None:
        """At the end of the stream: FrameError if it stopped inside a frame."""
        if self._buf:
            raise FrameError("truncated length" if len(self._buf) < 4 else "truncated frame")


def _kernel_unsent(writer: asyncio.StreamWriter) -> int:
    """Bytes in the kernel's send queue of ``writer``'s socket (Linux SIOCOUTQ; 0 where unavailable)."""
    sock = writer.get_extra_info("socket")
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    except (AttributeError, OSError, ValueError):
        return 0


class _Refused(asyncio.Protocol):
    """A connection beyond a port's accept rate: reset at once, before any stream, task or buffer."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()      # type: ignore[attr-defined]


async def _serve_gated(serve: Callable[..., Awaitable[None]], host: str, port: int, bucket: TokenBucket,
                       refused: Callable[[], None], limit: int = 1 << 16) -> asyncio.base_events.Server:
    """``asyncio.start_server(serve, host, port, limit=limit)``, except that a connection beyond
    ``bucket`` is reset as it is accepted (``refused()`` counts it): a connect flood from many
    addresses, which per-address limits cannot see, costs the node an accept and a reset each."""
    loop = asyncio.get_running_loop()

    def protocol() -> asyncio.BaseProtocol:
        if not bucket.take():
            refused()
            return _Refused()
        return asyncio.StreamReaderProtocol(asyncio.StreamReader(limit=limit), serve)

    return await loop.create_server(protocol, host, port)


def _close(writer: asyncio.StreamWriter) -> None:
    try:
        writer.close()
    except Exception:
        pass


# --- peer handshake -------------------------------------------------------------------------------

class HandshakeError(Exception):
    """The other end of a peer connection did not prove the validator key it claimed."""


def auth_bytes(role: str, chain_id: str, dialer: int, listener: int, dialer_nonce: bytes,
               listener_nonce: bytes) -> bytes:
    """What ``role`` ("dialer" or "listener") signs in the handshake of one connection."""
    return cbor.dumps([PEER_AUTH_DOMAIN, role, chain_id, dialer, listener, dialer_nonce, listener_nonce])


def _hello(chain_id: str, sender: int, receiver: int, nonce: bytes) -> bytes:
    return frame(cbor.dumps([HELLO, chain_id, sender, receiver, nonce]))


def _parse_hello(data: bytes | None, chain_id: str, n: int) -> tuple[int, int, bytes]:
    """(sender, receiver, nonce) of a hello frame; HandshakeError if it is not one of ``chain_id``."""
    if data is None:
        raise HandshakeError("closed in the handshake")
    try:
        h = cbor.loads(data)
    except LedgerlinkError:
        raise HandshakeError("bad hello") from None
    if (not isinstance(h, list) or len(h) != 5 or h[0] != HELLO or h[1] != chain_id
            or type(h[2]) is not int or not 0 <= h[2] < n or type(h[3]) is not int or not 0 <= h[3] < n
            or h[2] == h[3] or not isinstance(h[4], bytes) or len(h[4]) != NONCE_SIZE):
        raise HandshakeError("bad hello")
    return h[2], h[3], h[4]


def _parse_proof(data: bytes | None) -> bytes:
    if data is None:
        raise HandshakeError("closed in the handshake")
    try:
        sig = cbor.loads(data)
    except LedgerlinkError:
        raise HandshakeError("bad proof") from None
    if not isinstance(sig, bytes) or len(sig) != 64:
        raise HandshakeError("bad proof")
    return sig


async def handshake_dial(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, config: "ClusterConfig",
                         index: int, key: bytes, peer: int, crypto: Any = None) -> None:
    """Prove validator ``index``'s key to ``peer`` and check ``peer``'s; HandshakeError if it fails.
    The caller bounds the time it takes."""
    crypto = crypto or get_backend("cpython")
    nonce = os.urandom(NONCE_SIZE)
    writer.write(_hello(config.chain_id, index, peer, nonce))
    sender, receiver, peer_nonce = _parse_hello(await read_frame(reader, MAX_HELLO_FRAME), config.chain_id,
                                                config.n)
    if (sender, receiver) != (peer, index):
        raise HandshakeError("hello from the wrong peer")
    writer.write(frame(cbor.dumps(crypto.sign(key, auth_bytes("dialer", config.chain_id, index, peer, nonce,
                                                               peer_nonce)))))
    sig = _parse_proof(await read_frame(reader, MAX_HELLO_FRAME))
    if not crypto.verify(config.nodes[peer].pubkey,
                         auth_bytes("listener", config.chain_id, index, peer, nonce, peer_nonce), sig):
        raise HandshakeError("peer %d did not prove its key" % peer)


async def handshake_accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, config: "ClusterConfig",
                           index: int, key: bytes, crypto: Any = None) -> int:
    """The validator index the dialer proved its key for; HandshakeError otherwise. Nothing is signed
    before the dialer's proof holds. The caller bounds the time it takes."""
    crypto = crypto or get_backend("cpython")
    dialer, receiver, dialer_nonce = _parse_hello(await read_frame(reader, MAX_HELLO_FRAME), config.chain_id,
                                                  config.n)
    if receiver != index:
        raise HandshakeError("hello for another node")
    nonce = os.urandom(NONCE_SIZE)
    writer.write(_hello(config.chain_id, index, dialer, nonce))
    sig = _parse_proof(await read_frame(reader, MAX_HELLO_FRAME))
    if not crypto.verify(config.nodes[dialer].pubkey,
                         auth_bytes("dialer", config.chain_id, dialer, index, dialer_nonce, nonce), sig):
        raise HandshakeError("dialer did not prove the key of validator %d" % dialer)
    writer.write(frame(cbor.dumps(crypto.sign(key, auth_bytes("listener", config.chain_id, dialer, index,
                                                               dialer_nonce, nonce)))))
    return dialer


def peek_kind(data: bytes) -> int | None:
    """The kind of a PBFT message from its first two bytes (a short array whose first item is a
    small uint), without decoding it; None if it does not start that way."""
    if len(data) >= 2 and 0x80 <= data[0] <= 0x97 and data[1] < 0x18:
        return data[1]
    return None


# --- peer links ---------------------------------------------------------------------------------

class _Outbound:
    """One dialled connection to a peer with a queue bounded in bytes: a peer that lets more than
    ``peer_queue_bytes`` pile up (or does not take a write for ``peer_write_timeout_s``) is cut off
    and the queue dropped."""

    def __init__(self, net: "PeerNetwork", peer: NodeAddress) -> None:
        self.net = net
        self.peer = peer
        self.queue: collections.deque[bytes] = collections.deque()
        self.queued_bytes = 0
        self.ready = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.connected = False
        self.writer: asyncio.StreamWriter | None = None

    def put(self, data: bytes) -> None:
        if self.queued_bytes + len(data) > self.net.limits.peer_queue_bytes:
            self.net.limit("peer_queue_bytes")
            log.warning("peer %d does not keep up: %d bytes queued, link cut", self.peer.index, self.queued_bytes)
            self.queue.clear()
            self.queued_bytes = 0
            if self.writer is not None:
                self.writer.transport.abort()
        self.queue.append(data)
        self.queued_bytes += len(data)
        self.ready.set()

    def _take(self, max_bytes: int = 1 << 20) -> bytes:
        chunks = []
        size = 0
        while self.queue and size < max_bytes:
            data = self.queue.popleft()
            self.queued_bytes -= len(data)
            chunks.append(frame(data))
            size += len(data) + 4
        return b"".join(chunks)

    async def run(self) -> None:
        delay = 0.05
        limits = self.net.limits
        while True:
            writer = None
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.peer.host, self.peer.peer_port), limits.handshake_timeout_s)
                await asyncio.wait_for(handshake_dial(reader, writer, self.net.config, self.net.index,
                                                      self.net.key, self.peer.index, self.net.crypto),
                                       limits.handshake_timeout_s)
            except (OSError, asyncio.TimeoutError, HandshakeError, FrameError) as exc:
                if isinstance(exc, (HandshakeError, FrameError)):
                    self.net.limit("peer_handshake_failed")
                    log.warning("handshake with peer %d failed: %s", self.peer.index, exc)
                if writer is not None:
                    _close(writer)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            delay = 0.05
            self.connected = True
            self.writer = writer
            log.info("connected to peer %d", self.peer.index)
            try:
                while True:
                    if not self.queue:
                        self.ready.clear()
                        await self.ready.wait()
                    writer.write(self._take())
                    await asyncio.wait_for(writer.drain(), limits.peer_write_timeout_s)
            except asyncio.TimeoutError:
                self.net.limit("peer_write_timeout")
                log.warning("peer %d took no write for %.0f s: link cut", self.peer.index,
                            limits.peer_write_timeout_s)
            except (OSError, ConnectionError) as exc:
                log.info("link to peer %d lost: %s", self.peer.index, exc)
            finally:
                self.connected = False
                self.writer = None
                writer.transport.abort()
            await asyncio.sleep(delay)


class PeerNetwork:
    """Listens for peers and keeps an outbound link to each; calls ``on_message(sender, data)`` with
    the frames of authenticated peers that their rate limits let through. ``key`` is this
    validator's private key (it proves it in each handshake)."""

    def __init__(self, config: ClusterConfig, index: int, max_frame: int,
                 on_message: Callable[[int, bytes], None], key: bytes, crypto: Any = None) -> None:
        self.chain_id = config.chain_id
        self.index = index
        self.config = config
        self.limits = config.ports
        self.max_frame = max_frame
        self.on_message = on_message
        self.key = key
        self.crypto = crypto or get_backend("cpython")
        self.links = {a.index: _Outbound(self, a) for a in config.nodes if a.index != index}
        self.server: asyncio.base_events.Server | None = None
        self.inbound: set[asyncio.StreamWriter] = set()
        self.peers: dict[int, asyncio.StreamWriter] = {}     # authenticated inbound connection per peer
        self.handshakes: collections.Counter[str] = collections.Counter()   # by address, and "" in total
        self._handshake_rate = _Buckets(self.limits.handshake_rate, self.limits.handshake_rate)
        self.dropped = 0
        self.limited: collections.Counter[str] = collections.Counter()
        self._warned: set[str] = set()

    def limit(self, name: str) -> None:
        """Count a limit that bit."""
        self.limited[name] += 1

    async def start(self) -> None:
        me = self.config.nodes[self.index]
        rate = self.limits.peer_accept_rate
        self.server = await _serve_gated(self._serve, me.host, me.peer_port, TokenBucket(rate, 2 * rate),
                                         lambda: self.limit("peer_accept_rate"))
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

    def add_validators(self, keys: tuple[bytes, ...], peers_file: str | Path) -> bool:
        """Link to the validators of ``keys`` beyond the known addresses (added by a set change), at
        their addresses in ``peers_file``; they authenticate with these keys. False while one has none
        there (logged; the caller asks again later)."""
        nodes = self.config.nodes
        while len(nodes) < len(keys):
            i = len(nodes)
            try:
                addr = added_address(i, keys[i], peers_file)
            except (OSError, ValueError) as exc:
                self._warn_once("peers file %s not usable: %s" % (peers_file, exc))
                return False
            if addr is None:
                self._warn_once("validator %d (key %s) has no address in %s: not linked yet"
                                % (i, keys[i].hex(), peers_file))
                return False
            nodes.append(addr)
            link = self.links[i] = _Outbound(self, addr)
            if self.server is not None:
                link.task = asyncio.create_task(link.run())
            log.info("validator %d added: linking to %s:%d", i, addr.host, addr.peer_port)
        return True

    def _warn_once(self, text: str) -> None:
        """Log ``text`` the first time only (the peers file is asked again at each commit)."""
        if text not in self._warned and len(self._warned) < 64:
            self._warned.add(text)
            log.warning("%s", text)

    def send(self, to: int, data: bytes) -> None:
        link = self.links.get(to)
        if link is not None:
            link.put(data)

    def broadcast(self, data: bytes) -> None:
        for link in self.links.values():
            link.put(data)

    def queued_bytes(self) -> int:
        return sum(link.queued_bytes for link in self.links.values())

    def unsent_bytes(self, peer: int) -> int:
        """Bytes on their way to ``peer`` that it has not taken: our queue, the stream's buffer and the
        kernel's send queue of the link."""
        link = self.links.get(peer)
        if link is None:
            return 0
        n = link.queued_bytes
        writer = link.writer
        if writer is not None:
            n += writer.transport.get_write_buffer_size() + _kernel_unsent(writer)
        return n

    def _drop(self, peer: Any, reason: str, authenticated: bool = False) -> None:
        """Count a dropped frame; logged as a warning only for an authenticated peer (strangers' frames
        are counted, not logged one by one: a flood of them must not become a flood of log lines)."""
        self.dropped += 1
        log.log(logging.WARNING if authenticated else logging.DEBUG, "dropped frame from %s: %s", peer, reason)

    def _admit(self, host: str) -> bool:
        lim = self.limits
        if self.handshakes[""] >= lim.max_handshakes:
            self.limit("peer_handshakes")
            return False
        if self.handshakes[host] >= lim.max_handshakes_per_address:
            self.limit("peer_handshakes_per_address")
            return False
        if not self._handshake_rate.get(host).take():
            self.limit("peer_handshake_rate")
            return False
        return True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        host = peer[0] if isinstance(peer, tuple) else str(peer)
        if not self._admit(host):
            writer.transport.abort()
            return
        self.inbound.add(writer)
        sender = None
        try:
            self.handshakes[host] += 1
            self.handshakes[""] += 1
            try:
                sender = await asyncio.wait_for(
                    handshake_accept(reader, writer, self.config, self.index, self.key, self.crypto),
                    self.limits.handshake_timeout_s)
            except asyncio.TimeoutError:
                self.limit("peer_handshake_timeout")
                self._drop(peer, "handshake timed out")
                return
            except HandshakeError as exc:
                self.limit("peer_handshake_failed")
                self._drop(peer, str(exc))
                return
            finally:
                self.handshakes[host] -= 1
                self.handshakes[""] -= 1
                if not self.handshakes[host]:
                    del self.handshakes[host]
            old = self.peers.get(sender)
            if old is not None:
                old.transport.abort()
            self.peers[sender] = writer
            await self._read_peer(sender, reader)
        except FrameError as exc:
            self._drop(peer, exc.reason, sender is not None)
        except (OSError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if sender is not None and self.peers.get(sender) is writer:
                del self.peers[sender]
            self.inbound.discard(writer)
            writer.transport.abort()

    async def _read_peer(self, sender: int, reader: asyncio.StreamReader) -> None:
        lim = self.limits
        buckets: dict[int | None, TokenBucket] = {}
        frames = FrameSplitter(self.max_frame)
        while True:
            if frames.pending:
                try:
                    chunk = await asyncio.wait_for(reader.read(READ_CHUNK), lim.peer_frame_timeout_s)
                except asyncio.TimeoutError:
                    self.limit("peer_frame_timeout")
                    raise FrameError("frame not completed within %.0f s" % lim.peer_frame_timeout_s) from None
            else:
                chunk = await reader.read(READ_CHUNK)
            if not chunk:
                frames.end()
                return
            for data in frames.feed(chunk):
                kind = peek_kind(data)
                bucket = buckets.get(kind)
                if bucket is None:
                    rate = lim.fetch_rate if kind == FETCH_BLOCKS else lim.peer_message_rate
                    bucket = buckets[kind] = TokenBucket(rate, 2 * rate)
                if not bucket.take():
                    self.limit("peer_rate_" + KIND_NAMES.get(kind, "other").replace("-", "_"))
                    continue
                if kind == FETCH_BLOCKS and self.unsent_bytes(sender) > lim.peer_fetch_backlog_bytes:
                    self.limit("peer_fetch_backlog")
                    continue
                self.on_message(sender, data)
            if frames.error is not None:
                raise frames.error


# --- client port ----------------------------------------------------------------------------------

Handler = Callable[[dict], Awaitable[dict]]
MAX_REPLY_BUFFER = 1 << 20
MAX_SMALL_REQUEST = 4096
#: bytes a client connection reads ahead of the request it is on: asyncio's stream buffer stops
#: reading at twice this (a stalled connection holds at most about 3x)
CLIENT_READ_LIMIT = 16 << 10
#: the largest request of each operation (bytes); others, and requests whose op cannot be read from
#: their first bytes, are held to MAX_SMALL_REQUEST
REQUEST_SIZE_CAPS = {"submit": 64 << 10, "submit_many": MAX_CLIENT_FRAME}
_ID_KEY = b"\x62id"
_OP_KEY = b"\x62op"


def peek_op(data: bytes) -> str | None:
    """The ``op`` of a client request from its first bytes, without decoding it: a deterministic
    request map starts with its ``id`` and ``op`` (no other key of ours sorts before them)."""
    if len(data) < 8 or not 0xA2 <= data[0] <= 0xB7 or data[1:4] != _ID_KEY:
        return None
    ib = data[4]
    pos = 5 + (0, 1, 2, 4, 8)[ib - 0x17] if 0x18 <= ib <= 0x1B else 5
    if ib > 0x1B or data[pos:pos + 3] != _OP_KEY or pos + 3 >= len(data):
        return None
    ib = data[pos + 3]
    if not 0x60 <= ib < 0x78:
        return None
    try:
        return data[pos + 4:pos + 4 + ib - 0x60].decode()
    except UnicodeDecodeError:
        return None


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


class _ClientConn:
    """What the client port knows of one connection."""

    __slots__ = ("host", "writer", "frames", "answered", "frame_started", "opened", "task")

    def __init__(self, host: str, writer: asyncio.StreamWriter, frames: FrameSplitter) -> None:
        self.host = host
        self.writer = writer
        self.frames = frames
        self.answered = 0
        self.frame_started = 0.0
        self.opened = time.monotonic()
        self.task = asyncio.current_task()


class ClientServer:
    """Serves CBOR requests on the client port; ``handler(request) -> response`` (``id`` added here)."""

    def __init__(self, host: str, port: int, handler: Handler, max_frame: int = MAX_CLIENT_FRAME,
                 limits: PortLimits | None = None) -> None:
        self.host = host
        self.port = port
        self.handler = handler
        self.max_frame = max_frame
        self.limits = limits or PortLimits()
        self.server: asyncio.base_events.Server | None = None
        self.conns: dict[asyncio.StreamWriter, _ClientConn] = {}
        self.per_address: collections.Counter[str] = collections.Counter()
        self._request_rate = _Buckets(self.limits.client_request_rate, 2 * self.limits.client_request_rate)
        self._bytes_rate = _Buckets(self.limits.client_bytes_rate, 2 * self.limits.client_bytes_rate)
        self._connect_rate = _Buckets(self.limits.client_connect_rate, 2 * self.limits.client_connect_rate)
        self.limited: collections.Counter[str] = collections.Counter()

    def limit(self, name: str) -> None:
        """Count a limit that bit."""
        self.limited[name] += 1

    async def start(self) -> None:
        rate = self.limits.client_accept_rate
        self.server = await _serve_gated(self._serve, self.host, self.port, TokenBucket(rate, 2 * rate),
                                         lambda: self.limit("client_accept_rate"), CLIENT_READ_LIMIT)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for w in list(self.conns):
            w.transport.abort()

    def buffered_bytes(self) -> int:
        """Bytes of partial frames held for all connections."""
        return sum(c.frames.pending for c in self.conns.values())

    def _close(self, conn: _ClientConn) -> None:
        """Forget ``conn`` now, drop what it holds and stop serving it."""
        if self.conns.pop(conn.writer, None) is None:
            return
        self.per_address[conn.host] -= 1
        if not self.per_address[conn.host]:
            del self.per_address[conn.host]
        conn.frames._buf.clear()
        conn.writer.transport.abort()
        if conn.task is not None and conn.task is not asyncio.current_task():
            conn.task.cancel()

    def _evict(self, host: str | None) -> bool:
        """Close the oldest connection (of ``host``, or any) that has not completed a request; False if none."""
        victims = [c for c in self.conns.values() if not c.answered and (host is None or c.host == host)]
        if not victims:
            return False
        self._close(min(victims, key=lambda c: c.opened))
        return True

    def _admit(self, host: str) -> bool:
        lim = self.limits
        if not self._connect_rate.get(host).take():
            self.limit("client_connect_rate")
            return False
        if self.per_address[host] >= lim.client_max_per_address:
            self.limit("client_connections_per_address")
            if not self._evict(host):
                return False
        if len(self.conns) >= lim.client_max_connections:
            self.limit("client_connections")
            if not self._evict(None):
                return False
        return True

    def _make_room(self, conn: _ClientConn) -> None:
        """Over the per-node budget of partial-frame bytes: cut the oldest partial frames (maybe ``conn``'s)."""
        budget = self.limits.client_buffered_bytes
        total = self.buffered_bytes()
        if total <= budget:
            return
        for c in sorted((c for c in self.conns.values() if c.frames.pending), key=lambda c: c.frame_started):
            self.limit("client_buffered_bytes")
            total -= c.frames.pending
            self._close(c)
            if total <= budget:
                return

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        host = peer[0] if isinstance(peer, tuple) else str(peer)
        if not self._admit(host):
            writer.transport.abort()
            return
        lim = self.limits
        if hasattr(writer.transport, "max_size"):
            writer.transport.max_size = CLIENT_READ_LIMIT    # bytes per recv (asyncio's default: 256 KiB)
        tasks: set[asyncio.Task] = set()
        replies = _Replies(writer)
        frames = FrameSplitter(self.max_frame)
        conn = self.conns[writer] = _ClientConn(host, writer, frames)
        self.per_address[host] += 1
        rate = self._request_rate.get(host)
        ingress = self._bytes_rate.get(host)
        try:
            while True:
                if frames.pending:
                    timeout = conn.frame_started + lim.client_frame_timeout_s - time.monotonic()
                    what = "client_frame_timeout"
                else:
                    timeout = lim.client_idle_timeout_s
                    what = "client_idle_timeout"
                try:
                    chunk = await asyncio.wait_for(reader.read(READ_CHUNK), max(timeout, 0.001))
                except asyncio.TimeoutError:
                    self.limit(what)
                    return
                if not chunk:
                    frames.end()
                    return
                pause = ingress.spend(len(chunk))
                if pause:
                    self.limit("client_bytes_rate")
                    await asyncio.sleep(pause)
                if writer not in self.conns:        # closed to make room (a cancel that wait_for may swallow)
                    return
                was_pending = frames.pending
                for data in frames.feed(chunk):
                    pause = rate.spend(1)
                    if pause:
                        self.limit("client_request_rate")
                        await asyncio.sleep(pause)
                        if writer not in self.conns:
                            return
                    req = self._decode(data, peer)
                    if req is None:
                        writer.write(frame(cbor.dumps({"ok": False, "error": "malformed request"})))
                        continue
                    t = asyncio.create_task(self._answer(req, writer, replies, conn))
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
                if frames.error is not None:
                    raise frames.error
                if frames.pending and (not was_pending or frames.pending < len(chunk)):
                    conn.frame_started = time.monotonic()
                if frames.pending > MAX_SMALL_REQUEST:
                    self._make_room(conn)
                    if writer not in self.conns:
                        return
                await self._backpressure(writer, tasks)
        except FrameError as exc:
            self.limit("client_bad_frame")
            log.debug("dropped client frame from %s: %s", peer, exc.reason)
        except (OSError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            for t in tasks:
                t.cancel()
            self._close(conn)

    def _decode(self, data: bytes, peer: Any) -> dict | None:
        op = peek_op(data)
        if len(data) > REQUEST_SIZE_CAPS.get(op or "", MAX_SMALL_REQUEST):
            self.limit("client_request_size")
            log.debug("dropped client request from %s: %d bytes for op %r", peer, len(data), op)
            return None
        try:
            req = cbor.loads(data, max_size=self.max_frame)
        except LedgerlinkError:
            req = None
        if not isinstance(req, dict) or type(req.get("id")) is not int or not isinstance(req.get("op"), str):
            self.limit("client_malformed")
            log.debug("dropped client request from %s: malformed", peer)
            return None
        return req

    async def _backpressure(self, writer: asyncio.StreamWriter, tasks: set) -> None:
        """Wait while the client leaves too many replies unread or too many requests are in flight;
        ConnectionError if that lasts ``client_write_timeout_s``."""
        lim = self.limits
        if writer.transport.get_write_buffer_size() <= MAX_REPLY_BUFFER and len(tasks) < lim.client_max_in_flight:
            return
        deadline = time.monotonic() + lim.client_write_timeout_s
        while writer.transport.get_write_buffer_size() > MAX_REPLY_BUFFER or len(tasks) >= lim.client_max_in_flight:
            if time.monotonic() > deadline:
                self.limit("client_write_timeout")
                raise ConnectionError("client reads no replies")
            await asyncio.sleep(0.01)

    async def _answer(self, req: dict, writer: asyncio.StreamWriter, replies: _Replies, conn: _ClientConn) -> None:
        try:
            resp = await self.handler(req)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("client request %r failed", req.get("op"))
            resp = {"ok": False, "error": "internal error: %s" % type(exc).__name__}
        resp["id"] = req["id"]
        conn.answered += 1
        replies.add(frame(cbor.dumps(resp)))
