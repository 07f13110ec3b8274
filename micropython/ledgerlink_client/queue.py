"""Bounded offline queue of outgoing frames and a persistent sequence counter, on injectable storage.

Queue files (names from ``name``):
  ``<name>.dat``  append-only records: 2-byte body length (big-endian), 4-byte check
                  (SHA-256(body)[0:4]), body = 1-byte topic length, topic (UTF-8), payload.
  ``<name>.idx``  8 bytes: 4-byte offset of the first undelivered record, 4-byte check.
Delivering a record only rewrites the small index; the data file is emptied when everything has been
delivered and compacted (live records copied to a new file) when an append would not fit. When the
queue is full (``max_bytes`` of live records or ``max_frames``) the oldest record is dropped and
``dropped`` counts it.

Protects against: loss of undelivered readings across resets, torn writes (a record or index whose
check fails ends the scan; the torn tail is cut off at the next compaction), unbounded flash use, and
sequence-number reuse after a reset (``SeqCounter`` persists a reserved upper bound before handing out
numbers, so a reset skips numbers but never repeats one; a repeated number would repeat a CCM nonce).
A counter file that is missing or fails its check makes the counter ``lost``: it restarts at 1 and the
client opens a new session instead of restoring the stored one (``device_protocol.restore_session``).
Tested under CPython on real files in a temporary folder and in MicroPython on ``MemoryStorage``.
"""

import hashlib


def _check(data):
    return hashlib.sha256(data).digest()[:4]


class MemoryStorage:
    """Storage in RAM (tests, boards without a file system); same interface as ``FileStorage``."""

    def __init__(self):
        self.files = {}

    def size(self, name):
        f = self.files.get(name)
        return 0 if f is None else len(f)

    def read(self, name, offset=0, n=-1):
        f = self.files.get(name)
        if f is None:
            return b""
        end = len(f) if n < 0 else offset + n
        return bytes(f[offset:end])

    def append(self, name, data):
        if name not in self.files:
            self.files[name] = bytearray()
        self.files[name].extend(data)

    def replace(self, name, data):
        self.files[name] = bytearray(data)

    def rename(self, old, new):
        self.files[new] = self.files.pop(old)

    def remove(self, name):
        if name in self.files:
            del self.files[name]


class FileStorage:
    """Files in one folder (flash on a board). ``replace`` writes a temporary file and renames it."""

    def __init__(self, folder):
        self.folder = folder.rstrip("/")

    def path(self, name):
        return self.folder + "/" + name

    def size(self, name):
        import os

        try:
            return os.stat(self.path(name))[6]
        except OSError:
            return 0

    def read(self, name, offset=0, n=-1):
        try:
            f = open(self.path(name), "rb")
        except OSError:
            return b""
        try:
            if offset:
                f.seek(offset)
            return f.read() if n < 0 else f.read(n)
        finally:
            f.close()

    def append(self, name, data):
        f = open(self.path(name), "ab")
        try:
            f.write(data)
        finally:
            f.close()

    def replace(self, name, data):
        tmp = name + ".tmp"
        f = open(self.path(tmp), "wb")
        try:
            f.write(data)
        finally:
            f.close()
        self.rename(tmp, name)

    def rename(self, old, new):
        import os

        try:
            os.rename(self.path(old), self.path(new))
        except OSError:
            self.remove(new)
            os.rename(self.path(old), self.path(new))

    def remove(self, name):
        import os

        try:
            os.remove(self.path(name))
        except OSError:
            pass


def _load_u32(storage, name):
    """The checked 4-byte value of a small file (falling back to its .tmp copy), or None."""
    for candidate in (name, name + ".tmp"):
        raw = storage.read(candidate)
        if len(raw) == 8 and _check(raw[:4]) == raw[4:]:
            return int.from_bytes(raw[:4], "big")
    return None


def _store_u32(storage, name, value):
    raw = value.to_bytes(4, "big")
    storage.replace(name, raw + _check(raw))


class StoredRecord:
    """One small file of ``storage`` as a record store (``load()``: bytes or None, ``store(data)``)."""

    def __init__(self, storage, name):
        self.storage = storage
        self.name = name

    def load(self):
        return self.storage.read(self.name) or None

    def store(self, data):
        self.storage.replace(self.name, data)


class OfflineQueue:
    """FIFO of (topic, payload) records that survives resets; see the module docstring for the format."""

    def __init__(self, storage, name="llq", max_bytes=32768, max_frames=256):
        self.storage = storage
        self.dat = name + ".dat"
        self.idx = name + ".idx"
        self.max_bytes = max_bytes
        self.max_frames = max_frames
        self.dropped = 0
        self._offsets = []
        self._end = 0
        head = _load_u32(storage, self.idx) or 0
        self._scan(head)
        if self._end != storage.size(self.dat):
            self._compact()

    def _scan(self, head):
        size = self.storage.size(self.dat)
        pos = head if head <= size else size
        offsets = []
        while pos + 6 <= size:
            hdr = self.storage.read(self.dat, pos, 6)
            n = int.from_bytes(hdr[:2], "big")
            if n < 1 or pos + 6 + n > size:
                break
            if _check(self.storage.read(self.dat, pos + 6, n)) != hdr[2:6]:
                break
            offsets.append(pos)
            pos += 6 + n
        self._offsets = offsets
        self._end = pos

    def __len__(self):
        return len(self._offsets)

    def _live_bytes(self):
        return self._end - self._offsets[0] if self._offsets else 0

    def _compact(self):
        start = self._offsets[0] if self._offsets else self._end
        live = self.storage.read(self.dat, start, self._end - start) if self._offsets else b""
        tmp = self.dat + ".new"
        self.storage.remove(tmp)
        if live:
            self.storage.append(tmp, live)
        # Index first: a reset between the two steps re-sends delivered records rather than losing any.
        _store_u32(self.storage, self.idx, 0)
        if live:
            self.storage.rename(tmp, self.dat)
        else:
            self.storage.remove(self.dat)
        self._offsets = [o - start for o in self._offsets]
        self._end = len(live)

    def push(self, topic, payload):
        """Append a record; drop the oldest records first if the queue is full."""
        t = topic.encode("utf-8")
        body = bytes([len(t)]) + t + bytes(payload)
        if len(t) > 255 or len(body) > 65535 or len(body) + 6 > self.max_bytes:
            raise ValueError("record does not fit in the queue")
        record = len(body).to_bytes(2, "big") + _check(body) + body
        dropped = False
        while self._offsets and (len(self._offsets) >= self.max_frames or
                                 self._live_bytes() + len(record) > self.max_bytes):
            self._offsets.pop(0)
            self.dropped += 1
            dropped = True
        if self._end + len(record) > self.max_bytes:
            self._compact()
        elif dropped:
            _store_u32(self.storage, self.idx, self._offsets[0] if self._offsets else self._end)
        self.storage.append(self.dat, record)
        self._offsets.append(self._end)
        self._end += len(record)

    def peek(self, i=0):
        """The i-th undelivered (topic, payload), oldest first."""
        pos = self._offsets[i]
        n = int.from_bytes(self.storage.read(self.dat, pos, 2), "big")
        body = self.storage.read(self.dat, pos + 6, n)
        tl = body[0]
        return body[1:1 + tl].decode("utf-8"), body[1 + tl:]

    def pop(self):
        """Forget the oldest record (it was delivered)."""
        self._offsets.pop(0)
        if self._offsets:
            _store_u32(self.storage, self.idx, self._offsets[0])
        else:
            self.storage.remove(self.dat)
            self._end = 0
            _store_u32(self.storage, self.idx, 0)


class SeqCounter:
    """Strictly increasing sequence numbers (1, 2, ...) that never repeat across resets; ``lost``: the
    stored mark was missing or damaged at start (the sequence restarted)."""

    def __init__(self, storage, name="llseq", block=16):
        self.storage = storage
        self.name = name
        self.block = block
        reserved = _load_u32(storage, name)
        self.lost = reserved is None
        self.reserved = reserved or 0
        self.last = self.reserved

    def advance(self, seq):
        """Make every later number higher than ``seq`` (stored with the next number handed out)."""
        if seq > self.last:
            self.last = min(seq, 0xFFFFFFFF)

    def hold(self):
        """Store the mark now (at least ``last``), so a session opened at ``last`` outlives a reset."""
        if self.last > self.reserved:
            self.reserved = self.last
        _store_u32(self.storage, self.name, self.reserved)

    def next(self):
        seq = self.last + 1
        if seq > 0xFFFFFFFF:
            raise OverflowError("sequence numbers exhausted: a new identity or session is needed")
        if seq > self.reserved:
            self.reserved = min(seq + self.block - 1, 0xFFFFFFFF)
            _store_u32(self.storage, self.name, self.reserved)
        self.last = seq
        return seq
