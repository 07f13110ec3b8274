"""File keystore of a device identity key, and a file store for the sequence-number mark.

The key is made on the device (``get_backend().generate_private_key()``) and never leaves it. It is
written to a temporary file created with ``os.open(..., O_CREAT | O_EXCL, 0o600)``, fsynced and renamed
over the target, so a crash never leaves a partial key file and the key is never readable by others,
not even briefly. A key file readable or writable by group or others, not owned by this user, or not
a regular file is refused (``KeystoreError``) rather than used. The key appears in no log message or
``repr``.

Protects against: key disclosure through file permissions or logs, torn writes, and sequence numbers
repeating after a crash (the counter mark is written the same atomic way). Tested in
tests/device/test_keystore.py (modes, refusal of loose permissions, reload, counter reopen).
"""

from __future__ import annotations

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


class FileCounter:
    """Counter storage for ``SequenceCounter``: the high-water mark as decimal text, written atomically."""

    def __init__(self, path: str) -> None:
        self.path = os.fspath(path)

    def load(self) -> int:
        if not os.path.exists(self.path):
            return 0
        data = _read_private(self.path)
        try:
            value = int(data.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            raise KeystoreError("%s does not hold a sequence mark" % self.path) from None
        if value < 0:
            raise KeystoreError("%s holds a negative sequence mark" % self.path)
        return value

    def store(self, value: int) -> None:
        atomic_write(self.path, b"%d\n" % value)
