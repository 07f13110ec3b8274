"""The board client in MicroPython (every runtime of ``client_vm``) with its counter file deleted,
truncated, bit-flipped and rolled back, and a replay refusal: the same rules the CPython SDK follows
(tests/device/test_counter_faults.py). The session certificate comes from the gateway's own checks on
the host; the client runs on ``MemoryStorage`` whose files the program damages between "resets".
"""

import pytest

from ledgerlink.protocol import device_protocol as dp
from ledgerlink.gateway import checks as c
from tests.device.helpers import NOW, Env

pytestmark = pytest.mark.micropython

PROGRAM = """
import gc, json, hashlib
from ledgerlink.core import cbor, cose, session_keys
from ledgerlink.protocol import device_protocol as dp
from ledgerlink_client import device
from ledgerlink_client.queue import MemoryStorage

NOW = %(now)d

def collect():
    if gc.isenabled():          # never in the WASI VM: its collector does not see the VM's stack
        gc.collect()

class Link:
    sent = []
    def __init__(self):
        self.events = []
        self.pid = 0
    def connect(self):
        pass
    def subscribe(self, topic, qos):
        pass
    def publish(self, topic, payload, qos=1, retain=False, pid=None, dup=False):
        if pid is None:
            self.pid += 1
            pid = self.pid
        leaf = topic[topic.rfind('/') + 1:]
        nonce = None
        if leaf == 'up' and payload[0] == 0xd0:
            msg = cose.decode_encrypt0(bytes(payload))
            nonce = (msg.kid + b'/' + msg.partial_iv).hex()
        Link.sent.append([leaf, hashlib.sha256(payload).digest()[:8].hex(), nonce])
        Link.last = bytes(payload)
        self.events.append(('puback', pid))
        return pid
    def ping(self):
        pass
    def poll(self, timeout_ms):
        events, self.events = self.events, []
        return events
    def close(self):
        pass
    disconnect = close

links = []

def factory():
    links.append(Link())
    return links[-1]

cfg = {'site': %(site)r, 'identity_key': bytes.fromhex(%(priv)r), 'ca_public': bytes.fromhex(%(ca)r)}
keys = session_keys.SessionKeys(bytes.fromhex(%(key)r), bytes.fromhex(%(base_iv)r), bytes.fromhex(%(sid)r))

def boot(storage):
    return device.DeviceClient(cfg, factory, storage=storage, rng=host_urandom, time_ms=lambda: NOW,
                               sleep_ms=lambda ms: None)

def first_boot():
    Link.sent = []
    storage = MemoryStorage()
    client = boot(storage)
    client.protocol.set_session(dp.Session(keys, bytes.fromhex(%(gw_id)r), %(valid_until)d,
                                           bytes.fromhex(%(cert)r), client.seq.last))
    storage.replace('llsess', client.protocol.session_record())
    for i in range(3):
        client.publish({'i': i})
    client.flush(1000)
    return storage

def clone(storage):
    copy = MemoryStorage()
    for name in storage.files:
        copy.files[name] = bytearray(storage.files[name])
    return copy

def damage(storage, fault):
    f = storage.files['llseq']
    if fault == 'deleted':
        storage.remove('llseq')
    elif fault == 'truncated':
        storage.files['llseq'] = f[:4]
    elif fault == 'bit-flipped':
        f[1] ^= 4

out = {}
sent = {}
booted = first_boot()
before = Link.sent
collect()
for fault in ('deleted', 'truncated', 'bit-flipped'):
    Link.sent = list(before)
    storage = clone(booted)
    damage(storage, fault)
    again = boot(storage)
    held = again.publish({'after': fault})
    again.step(0)
    again.step(0)
    out[fault] = {'lost': again.seq.lost, 'restored': again.stats['sessions_restored'],
                  'session': again.session is not None, 'record': len(storage.read('llsess')),
                  'held': held is None, 'requests': again.stats['session_requests'],
                  'session_topic': [e for e in Link.sent[len(before):] if e[0] == 'session'] != []}
    sent[fault] = Link.sent
    again = storage = None
    collect()

# intact: the session comes back and its numbers continue above the stored mark
Link.sent = list(before)
storage = clone(booted)
old = storage.read('llseq')
again = boot(storage)
seq = again.publish({'r': 1})
again.step(0)
frame = Link.last
again.step(0)
out['intact'] = {'lost': again.seq.lost, 'restored': again.stats['sessions_restored'], 'seq': seq,
                 'session': again.session is not None, 'record': len(storage.read('llsess'))}
# a replay refusal of that frame drops the session and moves the counter on; a new session is asked for
refusal = cbor.dumps({0: 2, 1: hashlib.sha256(frame).digest(), 2: 7, 3: 'seq already seen'})
links[-1].events.append(('msg', again.topic_down, refusal))
again.step(0)
again.step(0)
out['replay'] = {'seq': seq, 'session': again.session is not None, 'record': len(storage.read('llsess')),
                 'last': again.seq.last, 'requests': again.stats['session_requests'],
                 'session_topic': Link.sent[-1][0] == 'session'}
sent['replay'] = Link.sent
again = storage = None
collect()

# rolled back: a session opened at counter mark 36, then the counter file of an earlier time (16)
Link.sent = list(before)
storage = clone(booted)
client = boot(storage)
for i in range(20):
    client.publish({'i': i})
client.flush(1000)
client.protocol.set_session(dp.Session(keys, bytes.fromhex(%(gw_id)r), %(valid_until)d,
                                       bytes.fromhex(%(cert)r), client.seq.last))
storage.replace('llsess', client.protocol.session_record())
storage.replace('llseq', old)
mark = client.session.mark
client = None
collect()
rolled = boot(storage)
out['rolled-back'] = {'lost': rolled.seq.lost, 'last': rolled.seq.last, 'mark': mark,
                      'session': rolled.session is not None, 'record': len(storage.read('llsess'))}
sent['rolled-back'] = Link.sent

try:
    device.DeviceClient(dict(cfg, session={'key': keys.key, 'base_iv': keys.base_iv, 'session_id': keys.session_id}),
                        factory)
    out['pre-made'] = 'accepted'
except ValueError as exc:
    out['pre-made'] = str(exc)
out['sent'] = sent
print(json.dumps(out))
"""


def session_params() -> dict:
    """A session of the sensor device, opened against the gateway's checks on the host."""
    env = Env()
    dev = env.device("sensor")
    req = dev.session_request(NOW)
    [reply] = [e for e in env.feed(req.topic, req.payload) if isinstance(e, c.Reply)]
    assert isinstance(dev.handle_down(reply.payload, NOW), dp.SessionOpened)
    s = dev.session
    return {"now": NOW, "site": env.gw.site, "priv": env.net["sensor"].priv.hex(), "ca": env.ca_public.hex(),
            "key": s.keys.key.hex(), "base_iv": s.keys.base_iv.hex(), "sid": s.keys.session_id.hex(),
            "gw_id": s.gateway_id.hex(), "valid_until": s.valid_until_s, "cert": s.cert.hex()}


def test_counter_faults_and_replay_refusals_in_vm(client_vm):
    params = session_params()
    # the WASI VM does not collect: its heap holds everything the ~40 sealed frames allocate; board32 runs
    # several client lives in one program at 256 KB (the heap budgets are tests/boards' subject)
    out, _ = client_vm.run_json(PROGRAM % params, fuel=40_000_000_000, heap_bytes=96 * 1024 * 1024,
                                board_heap=256 * 1024, timeout=180)
    assert out["intact"] == {"lost": False, "restored": 1, "seq": 17, "session": True,
                             "record": out["intact"]["record"]} and out["intact"]["record"] > 0
    for fault in ("deleted", "truncated", "bit-flipped"):
        # the sequence restarted: the stored session is deleted, the reading waits, a new session is asked for
        assert out[fault] == {"lost": True, "restored": 0, "session": False, "record": 0, "held": True,
                              "requests": 1, "session_topic": True}, fault
    rolled = out["rolled-back"]
    assert rolled["lost"] is False and rolled["last"] < rolled["mark"] and rolled["session"] is False
    assert rolled["record"] == 0
    replay = out["replay"]
    assert replay["session"] is False and replay["record"] == 0 and replay["requests"] == 1
    assert replay["last"] >= replay["seq"] + dp.REPLAY_SKIP_MIN and replay["session_topic"] is True
    assert "pre-made session keys" in out["pre-made"]
    # in each scenario (one device's life) no (session id, Partial IV) pair sealed two different frames
    for scenario, frames in out["sent"].items():
        sealed: dict = {}
        for _leaf, frame_hash, nonce in frames:
            if nonce is not None:
                sealed.setdefault(nonce, set()).add(frame_hash)
        assert len(sealed) >= 3 and all(len(f) == 1 for f in sealed.values()), scenario
