"""The update targets of a board that installs an app library (A/B slots of .mpy sets) or ESP32 firmware
(``esp32.Partition`` OTA), and the slot to boot from (``app_path``). ``ledgerlink_client.update`` loads
this module only for a board that installs one of them: a board that updates its config alone keeps none
of it.
"""

from ledgerlink.core import cbor
from ledgerlink.protocol.codes import IMAGE_APP_LIBRARY, IMAGE_FIRMWARE

BLOCK = 4096                    # flash erase block of an ESP32 partition


def unpack_mpy_set(slot_path, files=None):
    """Unpack an .mpy set (CBOR map {relative path: bytes}) into ``slot_path + ".d"``."""
    if files is None:
        from ledgerlink.protocol.update_agent import Files

        files = Files()
    folder = slot_path + ".d"
    _remove_tree(folder)
    files.mkdir(folder)
    with open(slot_path, "rb") as f:
        entries = cbor.loads(f.read(), max_depth=2)
    if not isinstance(entries, dict):
        raise OSError(22, "an .mpy set must be a map of paths to bytes")
    for name, data in entries.items():
        if (not isinstance(name, str) or not isinstance(data, bytes) or name.startswith("/") or ".." in name
                or not name):
            raise OSError(22, "bad entry in .mpy set")
        parts = name.split("/")
        path = folder
        for part in parts[:-1]:
            path = path + "/" + part
            files.mkdir(path)
        files.write(folder + "/" + name, data)


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


class FirmwareTarget:
    """The firmware in ESP32 OTA partitions (``esp32.Partition``, or a class with its interface): chunks go
    to ``get_next_update()`` through the extended block protocol (a block erased with ``ioctl(6, block)``
    when its first chunk comes, then ``writeblocks(block, data, offset)``: no 4 KB buffer on the heap);
    the count of whole blocks written is kept in ``progress``, so a reset resumes at a block boundary.
    The switch is ``set_boot``, the check-in ``mark_app_valid_cancel_rollback``. The chunk size must
    divide the 4096-byte block."""

    component = IMAGE_FIRMWARE

    def __init__(self, files, progress, partition=None):
        if partition is None:
            from esp32 import Partition as partition
        self.partition = partition
        self.files = files
        self.progress = progress
        self._bytes = 0                 # bytes written in this start (from the resumed block boundary on)
        self._blocks = None

    def _by_slot(self, slot):
        found = self.partition.find(self.partition.TYPE_APP, label="ota_%d" % slot)
        if not found:
            raise OSError(2, "no partition ota_%d" % slot)
        return found[0]

    def _next(self):
        return self.partition(self.partition.RUNNING).get_next_update()

    def _written(self):
        if self._blocks is None:
            raw = self.files.read(self.progress)
            try:
                self._blocks = int(raw) if raw else 0
            except ValueError:
                self._blocks = 0
        return self._blocks

    def set_running(self, entry):
        from ledgerlink.protocol.update_agent import _PREVIOUS

        if entry is None or _PREVIOUS not in entry:
            self.partition.mark_app_valid_cancel_rollback()     # also after a check-in whose mark was cut short

    def received(self, chunk_size):
        if BLOCK % chunk_size:
            from ledgerlink.protocol import update_check as uc

            raise uc.UpdateRefused(uc.UPDATE_UNSUPPORTED, "firmware chunks must divide %d bytes" % BLOCK)
        self._bytes = self._written() * BLOCK
        return self._bytes

    def write(self, offset, data):
        block, within = divmod(offset, BLOCK)
        part = self._next()
        if within == 0:
            part.ioctl(6, block)
        part.writeblocks(block, data, within)
        self._bytes = offset + len(data)
        if within + len(data) == BLOCK:
            self._blocks = block + 1
            self.files.write(self.progress, b"%d" % self._blocks)

    def measure(self, size):
        import hashlib

        part = self._next()
        h = hashlib.sha256()
        buf = bytearray(256)
        have = min(size, self._bytes)
        at = 0
        while at < have:
            n = min(256, have - at)
            view = memoryview(buf)[:n]
            part.readblocks(at // BLOCK, view, at % BLOCK)
            h.update(view)
            at += n
        return h.digest(), have

    def discard(self):
        self._bytes = 0
        self._blocks = 0
        self.files.remove(self.progress)

    def prepare(self, entry):
        label = self._next().info()[4]
        return int(label.split("_")[-1])

    def switch(self, entry):
        from ledgerlink.protocol.update_agent import _SLOT

        self._by_slot(entry[_SLOT]).set_boot()
        self.files.remove(self.progress)
        self._blocks = 0

    def revert(self, entry):
        from ledgerlink.protocol.update_agent import _SLOT

        self._by_slot(entry[_SLOT]).set_boot()

    def confirm(self, entry):
        self.partition.mark_app_valid_cancel_rollback()
