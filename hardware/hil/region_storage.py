"""Storage for ``ledgerlink_client`` in a RAM region outside the MicroPython heap, standing in for the
flash of a board without a writable filesystem (the QEMU board: its PSRAM above the ROMFS image).

Same interface as ``queue.FileStorage``: queues, the sequence counter and the session live outside the
heap as they would on flash, so the heap holds what a board's heap holds. Files are written at the end
of the region (appends grow a file in place while it is the last one); space is not reclaimed, so a
region serves one test run. Its contents last until the board is reset or powered off, like RAM.
"""

import uctypes


class RegionStorage:
    def __init__(self, address, size):
        self.mem = uctypes.bytearray_at(address, size)
        self.files = {}       # name -> [offset, length]
        self.end = 0

    def _room(self, n):
        if self.end + n > len(self.mem):
            raise OSError(28)  # ENOSPC

    def size(self, name):
        f = self.files.get(name)
        return 0 if f is None else f[1]

    def read(self, name, offset=0, n=-1):
        f = self.files.get(name)
        if f is None:
            return b""
        end = f[1] if n < 0 else min(f[1], offset + n)
        return bytes(self.mem[f[0] + offset:f[0] + end])

    def append(self, name, data):
        f = self.files.get(name)
        if f is not None and f[0] + f[1] == self.end:
            self._room(len(data))
            self.mem[self.end:self.end + len(data)] = data
            f[1] += len(data)
            self.end += len(data)
            return
        old = self.read(name) if f is not None else b""
        self.replace(name, old)
        self.append(name, data)

    def replace(self, name, data):
        self._room(len(data))
        self.mem[self.end:self.end + len(data)] = data
        self.files[name] = [self.end, len(data)]
        self.end += len(data)

    def rename(self, old, new):
        self.files[new] = self.files.pop(old)

    def remove(self, name):
        self.files.pop(name, None)
