"""Session chain statements made under MicroPython (WASI VM, board32 from .mpy files and from ROMFS):
the portable protocol chains its session frames and signs the statement; the host checks it with the
device's public key alone and finds exactly the device's frames covered."""

from ledgerlink.core import cbor, cose
from ledgerlink.protocol import device_protocol as dp, session_chain as sc
from tests.device.helpers import CRYPTO, NOW, Env

KEY = bytes(range(16))
BASE_IV = bytes(range(100, 113))
SESSION_ID = b"sessid01"
SESSION_HEAP = 192 * 1024       # board32's heap for a session client from .mpy files (shared/tools/README.md)

CODE = """
import gc, json
from ledgerlink.core import session_keys
from ledgerlink.protocol import device_protocol as dp

class Counter:
    n = 0
    last = 0
    def next(self):
        self.n += 1
        self.last = self.n
        return self.n

NOW = %(now)d
dev = dp.DeviceProtocol(bytes.fromhex(%(priv)r), %(site)r, Counter())
dev.set_session(dp.Session(session_keys.SessionKeys(bytes.fromhex(%(key)r), bytes.fromhex(%(iv)r),
                                                    %(sid)r), bytes(16), None, b""))
out = []
due = []
for i in range(%(n)d):
    f = dev.reading({"i": i}, NOW, dp.MODE_SESSION)
    out.append((f.seq, f.payload))
    due.append(dev.chain_due(NOW))
    if due[-1]:
        s = dev.chain_statement(NOW)
        out.append((s.seq, s.payload))
s = dev.chain_statement(NOW, True)
out.append((s.seq, s.payload))
peak = gc.peak_live()[0] if hasattr(gc, "peak_live") else None     # board32 (the WASI VM does not collect)
print('[[', end='')             # one JSON line, printed a frame at a time (EVERY_FRAMES frames as one string overflow the heap)
for k in range(len(out)):
    print('%%s[%%d, "%%s"]' %% (',' if k else '', out[k][0], out[k][1].hex()), end='')
print('], %%s, %%s, %%s]' %% (json.dumps(due), json.dumps(dev.up_topic), json.dumps(peak)))
"""


def test_chain_statements_made_in_micropython_cover_its_frames(vm):
    env = Env()
    priv = env.net["sensor"].priv
    n = sc.EVERY_FRAMES + 2
    code = CODE % {"now": NOW, "priv": priv.hex(), "site": env.gw.site, "key": KEY.hex(), "iv": BASE_IV.hex(),
                   "sid": SESSION_ID, "n": n}
    (out, due, topic, _peak), _ = vm.run_json(code, board_heap=SESSION_HEAP, fuel=60_000_000_000, heap_bytes=64 << 20)
    assert due == [False] * (sc.EVERY_FRAMES - 1) + [True] + [False] * 2
    public = CRYPTO.public_key(priv, True)
    frames = [(seq, bytes.fromhex(f)) for seq, f in out]
    session_frames = [(seq, f) for seq, f in frames if f[0] == 0xD0]
    for seq, f in session_frames:                 # really sealed under the session, seq as Partial IV
        assert cbor.loads(cose.decrypt0(f, KEY, BASE_IV, topic.encode(), CRYPTO))[2] == seq
    statements = [sc.verify(f, public, topic, CRYPTO) for _, f in frames if f[0] == 0xD2]
    assert [(s.first, s.last) for s in statements] == [(1, sc.EVERY_FRAMES), (sc.EVERY_FRAMES + 2, n + 1)]
    covered = [h for s in statements for h in sc.covered(s, frames)]
    assert covered == [CRYPTO.sha256(f) for _, f in session_frames]
    assert dp.device_id_of(public) == statements[0].device_id
