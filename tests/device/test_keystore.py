"""File keystore: 0600 keys made on the device, loose permissions refused, counter mark reopened."""

from __future__ import annotations

import logging
import os
import stat

import pytest

from ledgerlink.core.backend import get_backend
from ledgerlink.device.core import SequenceCounter
from ledgerlink.device.keystore import FileCounter, FileKeystore, KeystoreError


def test_key_is_created_with_0600_and_reloads(tmp_path, caplog):
    ks = FileKeystore(tmp_path / "id.key")
    with caplog.at_level(logging.DEBUG):
        priv = ks.create()
    assert stat.S_IMODE(os.stat(ks.path).st_mode) == 0o600
    assert ks.load() == priv and len(priv) == 32
    assert ks.load_or_create() == priv
    assert ks.public_key() == get_backend().public_key(priv, True)
    assert priv.hex() not in caplog.text and priv.hex() not in repr(ks)
    assert [p.name for p in tmp_path.iterdir()] == ["id.key"]           # no temporary file left
    with pytest.raises(KeystoreError):
        ks.create()


def test_key_is_created_0600_even_with_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        priv = FileKeystore(tmp_path / "k").create()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "k").st_mode) == 0o600
    assert FileKeystore(tmp_path / "k").load() == priv


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o602, 0o620])
def test_loose_permissions_are_refused(tmp_path, mode):
    ks = FileKeystore(tmp_path / "id.key")
    ks.create()
    os.chmod(ks.path, mode)
    with pytest.raises(KeystoreError, match="group or others"):
        ks.load()
    os.chmod(ks.path, 0o400)
    assert len(ks.load()) == 32


def test_bad_key_files_are_refused(tmp_path):
    path = tmp_path / "k"
    for content in (b"", bytes(32), b"\xff" * 32, b"\x01" * 31):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, content)
        os.close(fd)
        with pytest.raises(KeystoreError):
            FileKeystore(path).load()
    os.unlink(path)
    os.mkdir(path, 0o700)
    with pytest.raises((KeystoreError, OSError)):
        FileKeystore(path).load()


def test_symlinked_key_is_refused(tmp_path):
    real = FileKeystore(tmp_path / "real")
    real.create()
    os.symlink(tmp_path / "real", tmp_path / "link")
    with pytest.raises(OSError):
        FileKeystore(tmp_path / "link").load()


def test_counter_mark_survives_reopen(tmp_path):
    path = tmp_path / "seq"
    seen = []
    for _ in range(4):
        counter = SequenceCounter(FileCounter(path), reserve=3)
        seen += [counter.next() for _ in range(5)]
    assert seen == sorted(set(seen))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert FileCounter(path).load() >= seen[-1]
    os.chmod(path, 0o644)                       # open to others: not trusted, the counter is lost
    assert FileCounter(path).load() is None
    os.chmod(path, 0o600)
    for junk in (b"x", b"17\n", b""):              # unchecked content (the old decimal text too) is lost
        path.write_bytes(junk)
        assert FileCounter(path).load() is None
    counter = SequenceCounter(FileCounter(path), reserve=3)
    assert counter.lost and counter.next() == 1 and FileCounter(path).load() == 3
