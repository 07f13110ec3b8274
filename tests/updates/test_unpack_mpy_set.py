"""Unpacking an .mpy set into its app-library slot (``ledgerlink_client.update_app``), a file and a block at a
time: every deterministic set unpacks to exactly its files; malformed, non-deterministic or escaping sets are
refused with OSError(22)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledgerlink.core import cbor
from tests.conftest import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT / "micropython"))

from ledgerlink_client import update_app  # noqa: E402

names = st.lists(st.text("abcdefghij_", min_size=1, max_size=12), min_size=1, max_size=3).map("/".join)


def unpack(tmp_path: Path, data: bytes) -> dict[str, bytes]:
    slot = tmp_path / "app.1"
    slot.write_bytes(data)
    update_app.unpack_mpy_set(str(slot))
    folder = tmp_path / "app.1.d"
    return {str(p.relative_to(folder)).replace(os.sep, "/"): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(names, st.binary(max_size=1500), min_size=1, max_size=6))
def test_every_set_unpacks_to_its_files(tmp_path_factory, entries):
    # a name that is also another's folder cannot be both a file and a folder
    entries = {n: d for n, d in entries.items() if not any(o.startswith(n + "/") for o in entries)}
    assert unpack(tmp_path_factory.mktemp("set"), cbor.dumps(entries)) == entries


def test_a_second_unpack_replaces_the_slot_folder(tmp_path):
    unpack(tmp_path, cbor.dumps({"a.py": b"1", "old/b.py": b"2"}))
    assert unpack(tmp_path, cbor.dumps({"a.py": b"3"})) == {"a.py": b"3"}


GOOD = cbor.dumps({"a.py": b"x" * 30, "b.py": b"y"})


@pytest.mark.parametrize("data, why", [
    (GOOD + b"\x00", "trailing"),
    (GOOD[:-1], "truncated"),
    (b"\xa2\x64b.py\x41y\x64a.py\x41x", "deterministic"),                   # keys out of order
    (b"\xa2\x64a.py\x41x\x64a.py\x41y", "deterministic"),                   # a key twice
    (b"\xa1\x78\x04a.py\x41x", "deterministic"),                             # a longer head than needed
    (b"\xbf\x64a.py\x41x\xff", "indefinite"),
    (b"\xa1\x64a.py\x5f\x41x\xff", "indefinite"),
    (b"\xa1\x02\x41x", "map of text paths"),                                 # a key that is not text
    (b"\xa1\x64a.py\x01", "map of text paths"),                              # a value that is not bytes
    (cbor.dumps({"/etc.py": b"x"}), "bad path"),
    (cbor.dumps({"../up.py": b"x"}), "bad path"),
    (cbor.dumps({"": b"x"}), "bad path"),
    (b"\xa1\x62\xff\xfe\x41x", "bad path"),                                  # not UTF-8
    (cbor.dumps([b"x"]), "map of text paths"),
])
def test_a_bad_set_is_refused(tmp_path, data, why):
    with pytest.raises(OSError, match=why) as info:
        unpack(tmp_path, data)
    assert info.value.args[0] == 22
