"""File keystore of a device identity key, and file stores for the sequence-number mark and records.

The key is made on the device (``get_backend().generate_private_key()``) and never leaves it. It is
written to a temporary file created with ``os.open(..., O_CREAT | O_EXCL, 0o600)``, fsynced and renamed
over the target, so a crash never leaves a partial key file and the key is never readable by others,
not even briefly. A key file readable or writable by group or others, not owned by this user, or not
a regular file is refused (``KeystoreError``) rather than used. The key appears in no log message or
``repr``.

Protects against: key disclosure through file permissions or logs, torn writes, and sequence numbers
repeating after a crash (the counter mark is written the same atomic way, with a check). A counter file
that is missing, damaged, or open to others reads as lost (None), never as a smaller number: the caller
then restarts the sequence under a new session (``ledgerlink.protocol.device_protocol``). Tested in
tests/device/test_keystore.py and tests/device/test_counter_faults.py.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from typing import Any

from ledgerlink.core.backend import get_backend
from ledgerlink.core.p256 import N

log = logging.getLogger(__name__)

KEY_LEN = 32


class KeystoreError(Exception):
    """The key or counter file cannot be used safely."""


def _fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` via an exclusive temporary file of ``mode``, fsync and rename."""
    tmp = "%s.tmp-%d" % (path, os.getpid())
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    _fsync_dir(path)


def _read_private(path: str) -> bytes:
    """Read a file only when it is a regular file of this user with no group/other permission."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeystoreError("%s is not a regular file" % path)
        if st.st_mode & 0o077:
            raise KeystoreError("%s is accessible by group or others (mode %o); refusing to use it (chmod 600)"
                                % (path, stat.S_IMODE(st.st_mode)))
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            raise KeystoreError("%s is owned by another user" % path)
        chunks = []
        while True:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


class FileKeystore:
    """The identity key of one device in ``path`` (32 raw bytes, mode 0600)."""

    def __init__(self, path: str, backend: Any = None) -> None:
        self.path = os.fspath(path)
        self.backend = get_backend(backend)

    def __repr__(self) -> str:
        return "FileKeystore(%r)" % self.path

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def create(self, rng: Any = None) -> bytes:
        """Make a new key on the device and store it; refuses to overwrite an existing key."""
        if self.exists():
            raise KeystoreError("%s exists; refusing to replace an identity key" % self.path)
        priv = self.backend.generate_private_key(rng)
        atomic_write(self.path, priv)
        log.info("created identity key file %s", self.path)
        return priv

    def load(self) -> bytes:
        """Load the key; KeystoreError when permissions are loose or the content is not a P-256 key."""
        data = _read_private(self.path)
        if len(data) != KEY_LEN or not 0 < int.from_bytes(data, "big") < N:
            raise KeystoreError("%s does not hold a 32-byte P-256 private key" % self.path)
        return data

    def load_or_create(self, rng: Any = None) -> bytes:
        return self.load() if self.exists() else self.create(rng)

    def public_key(self) -> bytes:
        return self.backend.public_key(self.load(), True)


def _check(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()[:4]


def _load_private(path: str) -> bytes | None:
    """The bytes of a private file, or None when it is missing, unreadable or open to others (logged)."""
    try:
        return _read_private(path)
    except FileNotFoundError:
        return None
    except (OSError, KeystoreError) as exc:
        log.warning("%s cannot be used: %s", path, exc)
        return None


class FileCounter:
    """Counter storage for ``SequenceCounter``: the high-water mark as 4 bytes big-endian and a 4-byte
    check (SHA-256[0:4]), written atomically; the board client's ``llseq`` file has the same layout."""

    def __init__(self, path: str) -> None:
        self.path = os.fspath(path)

    def load(self) -> int | None:
        """The stored mark, or None when the file is missing or damaged (the counter is lost)."""
        data = _load_private(self.path)
        if data is None:
            return None
        if len(data) != 8 or _check(data[:4]) != data[4:]:
            log.warning("%s does not hold a checked sequence mark: the counter is lost", self.path)
            return None
        return int.from_bytes(data[:4], "big")

    def store(self, value: int) -> None:
        raw = value.to_bytes(4, "big")
        atomic_write(self.path, raw + _check(raw))


class FileRecord:
    """A small record in a private file (the session record, the command record): ``load()`` gives its
    bytes or None, ``store(data)`` writes it atomically. The records carry their own checks."""

    def __init__(self, path: str) -> None:
        self.path = os.fspath(path)

    def load(self) -> bytes | None:
        return _load_private(self.path)

    def store(self, data: bytes) -> None:
        atomic_write(self.path, bytes(data))

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
