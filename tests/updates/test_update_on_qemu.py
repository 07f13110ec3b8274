"""The update checks on the QEMU board (MicroPython on an emulated Cortex-M3 with a 110 KB heap, the library
in ROMFS): an offer is checked and a config installed in RAM files (the board has no writable filesystem),
a lying node's proof is refused; with -icount the instructions of one offer check are counted."""

from __future__ import annotations

import pytest

from ledgerlink.core import cbor
from ledgerlink.protocol import update_check as uc
from ledgerlink.protocol.codes import IMAGE_CONFIGURATION
from ledgerlink.tools import qemu_board
from ledgerlink.tools.qemu_board import QemuBoard
from tests.updates.site import DEVICE_CLASS, ReleaseSite

pytestmark = pytest.mark.slow

CONFIG = b'{"interval_s": 6}' * 20

SETUP = r"""
import gc, time
from ledgerlink.protocol import update_agent as ua, update_check as uc

class RamFiles(ua.Files):
    # the device's flash, in RAM: the QEMU board has no writable filesystem
    def __init__(self):
        self.files = {}
    def size(self, path):
        f = self.files.get(path)
        return None if f is None else len(f)
    def read(self, path):
        f = self.files.get(path)
        return None if f is None else bytes(f)
    def write(self, path, data):
        self.files[path] = bytearray(data)
    def write_at(self, path, offset, data):
        f = self.files.setdefault(path, bytearray())
        f[offset:offset + len(data)] = data
    def rename(self, src, dst):
        self.files[dst] = self.files.pop(src)
        for name in [n for n in self.files if n.startswith(src + '/')]:     # a folder's files move with it
            self.files[dst + name[len(src):]] = self.files.pop(name)
    def remove(self, path):
        self.files.pop(path, None)
    def mkdir(self, path):
        self.files.setdefault(path, bytearray())
    def digest(self, path, size):
        import hashlib
        f = self.files[path]
        return hashlib.sha256(f[:size]).digest(), len(f)

files = RamFiles()
agent = ua.UpdateAgent('/upd', %(cls)r, %(chain)r, [bytes.fromhex(k) for k in %(keys)r],
                       [ua.ConfigTarget(files, '/config.json')], files)
agent.provision()
agent.boot(0)
"""

INSTALL = r"""
m = agent.offer(bytes(offer))
while agent.next_chunk() is not None:
    i = agent.next_chunk()
    agent.chunk(i, bytes(payload[i * m.chunk_size:(i + 1) * m.chunk_size]))
e = agent.finish(0)
print('RUNS', e['sequence'], bytes(files.files['/config.json']) == bytes(payload))
try:
    agent.offer(bytes(lying))
    print('REFUSED none')
except uc.UpdateRefused as exc:
    print('REFUSED', exc.code)
gc.collect()
print('FREE', gc.mem_free())
"""


def _inputs() -> tuple[ReleaseSite, bytes, bytes]:
    site = ReleaseSite()
    offer = site.release(CONFIG, IMAGE_CONFIGURATION, 2, chunk_size=128)
    lying = cbor.loads(site.release(CONFIG, IMAGE_CONFIGURATION, 3))
    lying[3][1][1][3] = lying[3][1][1][3][:2]                   # 2 of 4 validator signatures
    return site, offer, cbor.dumps(lying)


def test_offer_checked_and_config_installed_on_the_qemu_board(tmp_path):
    site, offer, lying = _inputs()
    image = qemu_board.library_image(tmp_path / "lib.romfs")
    with QemuBoard(image, heap_kb=110) as board:
        for name, data in (("offer", offer), ("payload", CONFIG), ("lying", lying)):
            board.put(name, data)
        board.exec(SETUP % {"cls": DEVICE_CLASS, "chain": site.chain_id, "keys": [k.hex() for k in site.keys]},
                   timeout=300)
        out = board.exec(INSTALL, timeout=600)
    assert "RUNS 2 True" in out
    assert "REFUSED %d" % uc.UPDATE_BAD_PROOF in out


def instructions() -> int:
    """Instructions of one offer check on the QEMU board (-icount shift=0)."""
    import tempfile
    from pathlib import Path

    site, offer, _ = _inputs()
    with tempfile.TemporaryDirectory() as tmp:
        image = qemu_board.library_image(Path(tmp) / "lib.romfs")
        with QemuBoard(image, heap_kb=110, icount=0) as board:
            board.put("offer", offer)
            board.exec(SETUP % {"cls": DEVICE_CLASS, "chain": site.chain_id, "keys": [k.hex() for k in site.keys]},
                       timeout=300)
            check = "uc.check_offer(bytes(offer), agent.chain_id, agent.validator_keys, agent.device_class)"
            out = board.exec(qemu_board.MEASURE % (check, check), timeout=900)
    return int(out.split("ICOUNT")[-1]) * 1000


if __name__ == "__main__":
    print("QEMU Cortex-M3: one update offer check (7 ES256 verifications, 2 record proofs): %d instructions"
          % instructions())
