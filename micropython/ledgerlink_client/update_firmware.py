"""ESP32 firmware updates of a board: ``FirmwareTarget`` writes an image to the next OTA partition through
``esp32.Partition``. ``ledgerlink_client.update`` loads this module only on a board that installs firmware.
"""

from ledgerlink.protocol.codes import IMAGE_FIRMWARE

BLOCK = 4096                    # flash erase block of an ESP32 partition


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
