"""The app library of a board in A/B slots of .mpy sets: a set unpacked into its slot's folder
(``unpack_mpy_set``), and the folder to boot from (``app_path``). ``ledgerlink_client.update`` loads this
module only on a board that installs an app library, and only while it unpacks one.
"""

from ledgerlink.core import cbor
from ledgerlink.protocol.codes import IMAGE_APP_LIBRARY



_COPY_BLOCK = 512
_NAME_MAX = 255                 # bytes of a path in an .mpy set


def _head(f, major):
    """The argument of the next CBOR head in file ``f``, which must be of ``major`` type in its shortest form
    (RFC 8949 deterministic encoding); (argument, the head's bytes). OSError(22) otherwise."""
    head = f.read(1)
    if len(head) != 1 or head[0] >> 5 != major:
        raise OSError(22, "an .mpy set must be a map of text paths to byte strings")
    ai = head[0] & 31
    if ai < 24:
        return ai, head
    if ai > 27:
        raise OSError(22, "an .mpy set must not use indefinite lengths")
    size = 1 << (ai - 24)
    more = f.read(size)
    if len(more) != size:
        raise OSError(22, "truncated .mpy set")
    value = int.from_bytes(more, "big")
    if value < (24 if size == 1 else 1 << (4 * size)):
        raise OSError(22, "an .mpy set must be in deterministic CBOR")
    return value, head + more


def unpack_mpy_set(slot_path, files=None):
    """Unpack an .mpy set (a deterministic CBOR map {relative path: bytes}) into ``slot_path + ".d"``, a file
    at a time and a block at a time: a set larger than the free heap unpacks. OSError(22) for a set that is
    malformed, not deterministic, or names a path outside its folder."""
    if files is None:
        from ledgerlink.protocol.update_agent import Files

        files = Files()
    folder = slot_path + ".d"
    _remove_tree(folder)
    files.mkdir(folder)
    with open(slot_path, "rb") as f:
        count, _ = _head(f, 5)
        previous = b""
        for _ in range(count):
            n, head = _head(f, 3)
            raw = f.read(n) if n <= _NAME_MAX else b""
            if len(raw) != n or not n:
                raise OSError(22, "bad path in .mpy set")
            key = head + raw                # keys sorted by their encodings, none twice (RFC 8949 4.2.1)
            if key <= previous:
                raise OSError(22, "an .mpy set must be in deterministic CBOR")
            previous = key
            try:
                name = raw.decode()
            except UnicodeError:
                raise OSError(22, "bad path in .mpy set")
            if name.startswith("/") or ".." in name:
                raise OSError(22, "bad path in .mpy set")
            path = folder
            for part in name.split("/")[:-1]:
                path = path + "/" + part
                files.mkdir(path)
            path = folder + "/" + name
            size, _ = _head(f, 2)
            files.write(path, b"")
            done = 0
            while done < size:
                block = f.read(min(_COPY_BLOCK, size - done))
                if not block:
                    raise OSError(22, "truncated .mpy set")
                files.write_at(path, done, block)
                done += len(block)
        if f.read(1):
            raise OSError(22, "trailing bytes after the .mpy set")


def _remove_tree(path):
    import os

    try:
        entries = list(os.ilistdir(path)) if hasattr(os, "ilistdir") else [(n, 0) for n in os.listdir(path)]
    except OSError:
        return
    for entry in entries:
        child = path + "/" + entry[0]
        try:
            os.remove(child)
        except OSError:
            _remove_tree(child)
    os.rmdir(path)


def app_path(directory, prefix):
    """At boot: the folder of the app library slot the update state names (for ``sys.path``), or None for
    the library the board was deployed with (no update, or rolled back to it)."""
    from ledgerlink.protocol import update_agent as ua

    raw = ua.Files().read(directory + "/state")
    try:
        entry = cbor.loads(raw)[1].get(IMAGE_APP_LIBRARY) if raw else None
    except Exception:                   # a damaged state: the deployed library, and updates refused
        return None
    if not entry or not ua._entry_ok(IMAGE_APP_LIBRARY, entry) or entry.get(ua._DIGEST) is None:
        return None
    return "%s.%d.d" % (prefix, entry.get(ua._SLOT, 0))
