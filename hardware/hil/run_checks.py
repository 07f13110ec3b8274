"""Hardware-in-the-loop checks run through mpremote on a board with ledgerlink installed (tools/deploy.py).

``python3 hardware/hil/run_checks.py --port PORT --board NAME --out DIR [--readings N] [--session-wait S]``

On the device, in separate mpremote execs: (1) the port, MicroPython version and free heap; (2) a few
Wycheproof ECDSA P-256/SHA-256 (P1363) verify cases and (3) AES-CCM open cases, sent as arguments in the
program text from ../shared/vectors, each compared with the expected result; (4) key generation, ECDSA
sign and verify, and (5) ECQV issue, reconstruct and public-key extraction, each timed with
``time.ticks_ms`` (ms; interpreter fuel is not visible through mpremote) with ``gc.mem_free`` after;
(6) session and receipt: from the board's deployed config (``ledgerlink.json``: broker, site, chain_id,
ca_public, validator_keys) and its provisioned key (``ledgerlink.key``, from ``ledgerlink provision``),
the board client (``ledgerlink_client.device.DeviceClient``) connects to the broker, opens a new ECQV
session with the gateway (a stored one is dropped first) and keeps it on flash; then each of
``--readings`` execs publishes one reading under it, waits for its receipt and checks it on the board
(batch inclusion, anchor, certified header with 2f+1 validator signatures). Reported: time to open the
session (connect, request, response checked, key derived), per reading the time from publishing to the
checked receipt and of the check itself, ledger height, ``gc.mem_free``. The readings use the board's
own queue and sequence counter (folder ``ll``, as the board program's ``/ll``), so a sequence number is
never reused. Wi-Fi (config ``wifi``) is brought up and the clock set by NTP when it is not. The board
reaches the broker through ``socket`` (``transport.open_socket``), or on the virtual board through
the host's sockets (``transport.CallTransport`` with ``host_call``, given by ``virtual_board
--network``); ``open_stream`` picks. The step is skipped, with a line saying what it needs, when the
config has no broker or the board has no key yet (not provisioned), or with ``--skip-session``; every
other problem (broker unreachable, the session response or a receipt not checking out, a timeout) fails
it with the reason.

Each program reports the peak heap of its step (``heap.peak_per_step`` in the JSON, a table in the text):
``gc.peak_live()`` where the firmware has it (board32, the QEMU board: the highest live heap after any
collection during the step), the lowest ``gc.mem_free()`` seen otherwise (sampled before each collection).

Writes ``<board>.txt`` (a table) and ``<board>.json`` to ``--out``. Exit 0 when every vector passed and
the session step passed or was skipped, 1 when something failed, 3 when the board did not answer.

On the WASI build (``virtual_board --runtime wasi``), ``gc.collect()`` is not called (that build's
collector corrupts memory); on boards and board32 it runs before each measurement.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
VECTORS = PROJECT_ROOT.parent / "shared" / "vectors"
MARK = "HIL:"
CONFIG_PATH = "ledgerlink.json"
STORAGE_DIR = "ll"

DEVICE_PRELUDE = """\
import sys, gc, time, json
WASI = getattr(sys.implementation, '_build', '') == 'wasi'
PEAK = hasattr(gc, 'peak_live')
_lowest = [gc.mem_free()]
def _sample():
    _lowest[0] = min(_lowest[0], gc.mem_free())
def collect():
    _sample()
    if not WASI:
        gc.collect()
def free():
    collect()
    return gc.mem_free()
def heap_peak():
    # the step's peak heap: gc.peak_live (highest live heap after any collection) where the firmware has
    # it, else the lowest gc.mem_free seen (sampled before each collection)
    if PEAK:
        gc.collect()
        return {'bytes': gc.peak_live()[0], 'measure': 'peak_live'}
    _sample()
    return {'bytes': _lowest[0], 'measure': 'lowest_free'}
def report(obj):
    obj['heap_peak'] = heap_peak()
    print('HIL:' + json.dumps(obj))
if PEAK:
    gc.collect()
    gc.peak_live(True)
def rng(n):
    try:
        return host_urandom(n)
    except NameError:
        import os
        return os.urandom(n)
"""

INFO = DEVICE_PRELUDE + """\
report({'platform': sys.platform, 'version': '.'.join(str(x) for x in sys.implementation.version[:3]),
        'machine': getattr(sys.implementation, '_machine', ''), 'mem_free': free(), 'wasi': WASI})
"""

ECDSA_VECTORS = DEVICE_PRELUDE + """\
from ledgerlink.core import ecdsa
from ledgerlink.core.errors import LedgerlinkError
out = []
for pub, cases in json.loads(%r):
    pub = bytes.fromhex(pub)
    for tc, msg, sig, expect in cases:
        try:
            ok = ecdsa.verify(pub, bytes.fromhex(msg), bytes.fromhex(sig))
        except LedgerlinkError:
            ok = False
        out.append([tc, ok == expect])
        collect()
report({'ecdsa': out, 'mem_free': free()})
"""

CCM_VECTORS = DEVICE_PRELUDE + """\
from ledgerlink.core import ccm
from ledgerlink.core.errors import LedgerlinkError
out = []
for tc, key, iv, aad, msg, ct, tag, expect in json.loads(%r):
    key, iv, aad = bytes.fromhex(key), bytes.fromhex(iv), bytes.fromhex(aad)
    try:
        pt = ccm.open(key, iv, bytes.fromhex(ct + tag), aad, len(tag) // 2)
        ok = pt == bytes.fromhex(msg) and ccm.seal(key, iv, pt, aad, len(tag) // 2) == bytes.fromhex(ct + tag)
    except LedgerlinkError:
        ok = False
    out.append([tc, ok == expect])
report({'ccm': out, 'mem_free': free()})
"""

ECDSA_TIMINGS = DEVICE_PRELUDE + """\
from ledgerlink.core import ecdsa
times = {'keygen': [], 'sign': [], 'verify': []}
low = free()
for i in range(%d):
    collect()
    t = time.ticks_ms(); priv = ecdsa.generate_private_key(rng); pub = ecdsa.public_key(priv)
    times['keygen'].append(time.ticks_diff(time.ticks_ms(), t))
    collect()
    t = time.ticks_ms(); sig = ecdsa.sign(priv, b'ledgerlink hil %%d' %% i)
    times['sign'].append(time.ticks_diff(time.ticks_ms(), t))
    collect()
    t = time.ticks_ms(); ok = ecdsa.verify(pub, b'ledgerlink hil %%d' %% i, sig)
    times['verify'].append(time.ticks_diff(time.ticks_ms(), t))
    if not ok:
        raise ValueError('own signature did not verify')
    low = min(low, gc.mem_free())
report({'times': times, 'mem_free': free(), 'mem_low': low})
"""

ECQV_TIMINGS = DEVICE_PRELUDE + """\
from ledgerlink.core import ecdsa, ecqv
ca_priv = ecdsa.generate_private_key(rng)
ca_pub = ecdsa.public_key(ca_priv)
times = {'ecqv_issue': [], 'ecqv_reconstruct': [], 'ecqv_public_key': []}
low = free()
for i in range(%d):
    collect()
    k_u, r_u = ecqv.create_request(rng)
    t = time.ticks_ms(); cert, r = ecqv.issue(r_u, ca_priv, bytes([i + 1]), b'hil-ca', b'hil-device', 0, 86400, rng=rng)
    times['ecqv_issue'].append(time.ticks_diff(time.ticks_ms(), t))
    collect()
    t = time.ticks_ms(); d_u, q_u = ecqv.reconstruct(k_u, cert, r, ca_pub)
    times['ecqv_reconstruct'].append(time.ticks_diff(time.ticks_ms(), t))
    collect()
    t = time.ticks_ms(); q = ecqv.public_key(cert, ca_pub)
    times['ecqv_public_key'].append(time.ticks_diff(time.ticks_ms(), t))
    if q != q_u:
        raise ValueError('extracted key differs from reconstructed key')
    low = min(low, gc.mem_free())
report({'times': times, 'mem_free': free(), 'mem_low': low})
"""


SESSION_COMMON = DEVICE_PRELUDE + """\
import os
P = json.loads(@PARAMS@)

def open_stream(host, port):
    # The board's route to host:port: the host's sockets on the virtual board (--network), else its own.
    call = globals().get('host_call')
    if call is None and WASI:
        raise OSError('the virtual board has no network: start it with --network')
    return transport.open_stream(host, port, call)

def read_text(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None

def load_config():
    # (config, None) or (None, [status, reason]) from the files deploy and provision wrote
    text = read_text(P['config'])
    if text is None:
        return None, ['fail', 'no %s on the board: run ledgerlink deploy' % P['config']]
    cfg = json.loads(text)
    broker = cfg.get('broker')
    if not broker:
        return None, ['skip', 'no broker configured in %s' % P['config']]
    if isinstance(broker, dict):
        cfg['port'] = broker.get('port', 1883)
        cfg['broker'] = broker.get('host')
    if not cfg['broker']:
        return None, ['skip', 'no broker configured in %s' % P['config']]
    key = read_text('ledgerlink.key')
    if not key:
        return None, ['skip', 'needs a provisioned board: no ledgerlink.key on it (run ledgerlink provision)']
    cfg['identity_key'] = bytes.fromhex(key.strip())
    ident = read_text('ledgerlink.id.json')
    if 'chain_id' not in cfg and ident:
        cfg['chain_id'] = json.loads(ident)['chain_id']
    for name in ('site', 'chain_id', 'ca_public'):
        if not cfg.get(name):
            return None, ['fail', '%s has no %s: run ledgerlink deploy with a complete config' % (P['config'], name)]
    cfg['ca_public'] = bytes.fromhex(cfg['ca_public'])
    keys = cfg.get('validators') or cfg.get('validator_keys')
    if not keys:
        return None, ['fail', '%s has no validator_keys: receipts cannot be checked' % P['config']]
    cfg['validators'] = [bytes.fromhex(k) for k in keys]
    if 'gateway_keys' in cfg:
        cfg['gateway_keys'] = dict((bytes.fromhex(k), bytes.fromhex(v)) for k, v in cfg['gateway_keys'].items())
    cfg['mode'] = 'session'
    cfg.pop('session', None)
    cfg.pop('device_id', None)
    return cfg, None

def network_up(cfg):
    # Wi-Fi and wall-clock time on a board (session certificates and readings carry the time)
    wifi = cfg.get('wifi')
    if wifi and not WASI:
        import network
        wlan = network.WLAN(network.STA_IF)
        wlan.active(True)
        if not wlan.isconnected():
            wlan.connect(wifi['ssid'], wifi['password'])
            t = time.ticks_ms()
            while not wlan.isconnected() and time.ticks_diff(time.ticks_ms(), t) < 20000:
                time.sleep_ms(100)
        if not wlan.isconnected():
            raise OSError('Wi-Fi %r did not connect within 20 s' % wifi['ssid'])
    if time.gmtime()[0] < 2024:
        try:
            import ntptime
            ntptime.settime()
        except Exception:
            pass
    if time.gmtime()[0] < 2024:
        raise OSError('the board clock is not set (year %d): no NTP answer' % time.gmtime()[0])

def make_client(cfg, results):
    from ledgerlink_client import device, mqtt, queue
    try:
        os.mkdir(P['storage'])
    except OSError:
        pass
    errors = []
    def factory():
        try:
            stream = open_stream(cfg['broker'], cfg['port'])
        except OSError as exc:
            errors.append(str(exc))
            raise
        login = read_login()
        return mqtt.MQTTClient(stream, 'll-' + client_id[0], keepalive=60, username=login.get('username'),
                               password=login.get('password'))
    client_id = ['']
    client = device.DeviceClient(cfg, factory, storage=queue.FileStorage(P['storage']), rng=rng,
                                 on_result=results.append)
    client_id[0] = client.device_id.hex()
    return client, errors

def read_login():
    # the broker login ledgerlink provision stored, if any
    return json.loads(read_text('ledgerlink.mqtt.json') or '{}')

def connect_problem(client, cfg, errors):
    if client.stats['connect_failures']:
        why = errors[-1] if errors else 'MQTT connect refused'
        return 'cannot reach the broker %s:%d: %s' % (cfg['broker'], cfg['port'], why)
    return None

def run(body):
    try:
        cfg, skip = load_config()
        if skip is not None:
            report({'status': skip[0], 'reason': skip[1]})
            return
        try:
            from ledgerlink_client import transport
        except ImportError:
            report({'status': 'fail', 'reason': 'the board client (ledgerlink_client) is not installed: '
                                                'run ledgerlink deploy'})
            return
        globals()['transport'] = transport
        network_up(cfg)
        report(body(cfg))
    except Exception as exc:
        report({'status': 'fail', 'reason': '%s: %s' % (type(exc).__name__, exc)})
"""

# Opens a new session (a stored one is dropped first), which is kept on flash for the readings.
SESSION_OPEN = SESSION_COMMON + """\
def body(cfg):
    from ledgerlink_client.device import SESSION_FILE
    results = []
    client, errors = make_client(cfg, results)
    client.protocol.drop_session()
    client.storage.remove(SESSION_FILE)
    out = {'device_id': client.device_id.hex(), 'broker': '%s:%d' % (cfg['broker'], cfg['port'])}
    reason = None
    start = time.ticks_ms()
    while client.stats['sessions_opened'] < 1 and reason is None:
        if time.ticks_diff(time.ticks_ms(), start) > P['timeout_ms']:
            reason = 'no session within %d s (%d requests sent)' % (P['timeout_ms'] // 1000,
                                                                   client.stats['session_requests'])
            break
        client.step(50)
        reason = connect_problem(client, cfg, errors)
        for r in results:
            text = getattr(r, 'reason', '')
            if type(r).__name__ == 'Refused' and r.seq is None:
                reason = 'the gateway refused the session request: code %d %s' % (r.code, text)
            elif type(r).__name__ == 'Ignored' and text.startswith('session response'):
                reason = text
        del results[:]
    out['open_ms'] = time.ticks_diff(time.ticks_ms(), start)
    out['mem_free'] = free()
    client.close()
    if reason is not None:
        out['status'] = 'fail'
        out['reason'] = reason
        return out
    s = client.session
    out.update(status='ok', session_id=s.keys.session_id.hex(), gateway_id=s.gateway_id.hex(),
               valid_until_s=s.valid_until_s)
    return out

run(body)
"""

# One reading under the stored session: published, its receipt awaited and checked on the board.
SESSION_READING = SESSION_COMMON + """\
def body(cfg):
    results = []
    client, errors = make_client(cfg, results)
    if not client.stats['sessions_restored']:
        return {'status': 'fail', 'reason': 'the session opened before is not on the board any more'}
    checks = []
    verify = client.protocol.verify_receipt
    def timed(receipt, frame=None):
        t = time.ticks_ms()
        r = verify(receipt, frame)
        checks.append([r.seq, time.ticks_diff(time.ticks_ms(), t)])
        return r
    client.protocol.verify_receipt = timed
    start = time.ticks_ms()
    seq = client.publish({'hil': P['index']})
    out = {'seq': seq, 'queued_before': client.pending() - 1}
    mine = None
    reason = None
    while mine is None and reason is None:
        if time.ticks_diff(time.ticks_ms(), start) > P['timeout_ms']:
            reason = 'no receipt for seq %d within %d s (%d readings still queued)' % (
                seq, P['timeout_ms'] // 1000, client.pending())
            break
        client.step(50)
        reason = connect_problem(client, cfg, errors)
        for r in results:
            if getattr(r, 'seq', None) != seq:
                continue
            if type(r).__name__ == 'ReceiptResult':
                mine = r
            elif type(r).__name__ == 'Refused':
                reason = 'the gateway refused seq %d: code %d %s' % (seq, r.code, r.reason)
        del results[:]
    out['receipt_ms'] = time.ticks_diff(time.ticks_ms(), start)
    client.close()
    out['check_ms'] = [ms for s, ms in checks if s == seq][:1] or [None]
    out['check_ms'] = out['check_ms'][0]
    out['mem_free'] = free()
    if mine is not None:
        out.update(valid=mine.valid, height=mine.height, reason=mine.reason)
        if not mine.valid:
            reason = 'receipt for seq %d does not verify: %s' % (seq, mine.reason)
    out['status'] = 'fail' if reason is not None else 'ok'
    if reason is not None:
        out['reason'] = reason
    return out

run(body)
"""


MEASURES = {"peak_live": "gc.peak_live (highest live heap)", "lowest_free": "lowest gc.mem_free"}


class BoardError(Exception):
    """The board did not answer or a device program raised."""


def load(relative: str) -> dict:
    path = VECTORS / relative
    if not path.is_file():
        raise FileNotFoundError("test vectors missing: %s (expected ../shared/vectors beside the project)" % path)
    return json.loads(path.read_text())


def ecdsa_cases(count: int) -> list:
    """[[pub_hex, [[tcId, msg, sig, expect_valid], ...]]]: the first ``count`` valid and invalid cases."""
    data = load("wycheproof/ecdsa_secp256r1_sha256_p1363_test.json")
    groups = []
    taken = {"valid": 0, "invalid": 0}
    for group in data["testGroups"]:
        picked = [[t["tcId"], t["msg"], t["sig"], t["result"] == "valid"] for t in _take(group["tests"], count, taken)]
        if picked:
            groups.append([group["publicKey"]["uncompressed"], picked])
        if min(taken.values()) >= count:
            break
    return groups


def _take(tests: list, count: int, taken: dict) -> list:
    """The tests of a group while fewer than ``count`` valid (and invalid) ones are taken in all."""
    out = []
    for t in tests:
        if t["result"] in taken and taken[t["result"]] < count:
            taken[t["result"]] += 1
            out.append(t)
    return out


def ccm_cases(count: int) -> list:
    """[[tcId, key, iv, aad, msg, ct, tag, expect_valid]] from groups our CCM supports (nonce 7..13 bytes)."""
    data = load("wycheproof/aes_ccm_test.json")
    out = []
    taken = {"valid": 0, "invalid": 0}
    for group in data["testGroups"]:
        if not 56 <= group["ivSize"] <= 104 or group["tagSize"] % 16:
            continue
        out += [[t["tcId"], t["key"], t["iv"], t["aad"], t["msg"], t["ct"], t["tag"], t["result"] == "valid"]
                for t in _take(group["tests"], count, taken)]
    return out


def run_on_board(port: str, code: str, timeout: float) -> dict:
    """Run one program with ``mpremote exec``; return the JSON it reported."""
    cmd = [sys.executable, "-m", "mpremote", "connect", port, "exec", code]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BoardError("no answer from %s within %ds" % (port, timeout)) from None
    for line in result.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    tail = (result.stderr.strip() or result.stdout.strip()).splitlines()
    raise BoardError(tail[-1] if tail else "mpremote exit code %d" % result.returncode)


def summarize(samples: list[int]) -> dict:
    ordered = sorted(samples)
    return {"n": len(ordered), "min_ms": ordered[0], "median_ms": ordered[len(ordered) // 2],
            "max_ms": ordered[-1]}


def device_program(template: str, params: dict) -> str:
    return template.replace("@PARAMS@", repr(json.dumps(params)))


def run_session(port: str, readings: int = 2, wait: float = 120.0, timeout: float = 600.0,
                config: str = CONFIG_PATH) -> dict:
    """The "session and receipt" step: open a session with the gateway, then ``readings`` readings, one
    per exec, each receipt checked on the board. Returns the step's report (``status`` pass, fail or
    skipped, with ``reason`` unless it passed)."""
    params = {"config": config, "storage": STORAGE_DIR, "timeout_ms": int(wait * 1000)}
    exec_timeout = max(timeout, wait + 120)
    opened = run_on_board(port, device_program(SESSION_OPEN, params), exec_timeout)
    status = opened.pop("status")
    step = {"status": "skipped" if status == "skip" else status, "config": config, "readings": [],
            "readings_asked": readings, "receipts_verified": 0}
    if status == "skip":
        step["reason"] = opened["reason"]
        return step
    step["open"] = opened
    if status != "ok":
        step["reason"] = "opening the session: " + opened.get("reason", "no reason given")
        return step
    for i in range(readings):
        one = run_on_board(port, device_program(SESSION_READING, dict(params, index=i + 1)), exec_timeout)
        step["readings"].append(one)
        if one["status"] != "ok":
            step["status"] = "fail"
            step["reason"] = "reading %d: %s" % (i + 1, one.get("reason", "no reason given"))
            return step
        step["receipts_verified"] += 1
    step["status"] = "pass"
    checks = [r["check_ms"] for r in step["readings"] if r.get("check_ms") is not None]
    step["check_ms"] = summarize(checks) if checks else None
    step["mem_free_low"] = min([opened["mem_free"]] + [r["mem_free"] for r in step["readings"]])
    return step


def run_checks(port: str, board: str, out_dir: Path, cases: int = 3, repeat: int = 3,
               timeout: float = 600.0, session: bool = True, readings: int = 2,
               session_wait: float = 120.0, config: str = CONFIG_PATH) -> dict:
    """Run every check on the board; write <board>.txt and <board>.json to ``out_dir``; return the report."""
    started = time.time()
    info = run_on_board(port, INFO, timeout)
    ecdsa = run_on_board(port, ECDSA_VECTORS % json.dumps(ecdsa_cases(cases)), timeout)
    ccm = run_on_board(port, CCM_VECTORS % json.dumps(ccm_cases(cases)), timeout)
    sig = run_on_board(port, ECDSA_TIMINGS % repeat, timeout)
    ecqv = run_on_board(port, ECQV_TIMINGS % repeat, timeout)
    vectors = {
        "ecdsa": {"total": len(ecdsa["ecdsa"]), "failed": [tc for tc, ok in ecdsa["ecdsa"] if not ok]},
        "aes_ccm": {"total": len(ccm["ccm"]), "failed": [tc for tc, ok in ccm["ccm"] if not ok]},
    }
    timings = {name: summarize(v) for part in (sig, ecqv) for name, v in part["times"].items()}
    if session:
        step = run_session(port, readings, session_wait, timeout, config)
    else:
        step = {"status": "skipped", "reason": "--skip-session given", "readings": [], "readings_asked": 0,
                "receipts_verified": 0}
    steps = {"info": info, "ecdsa_vectors": ecdsa, "ccm_vectors": ccm, "ecdsa_timings": sig, "ecqv_timings": ecqv}
    if "open" in step:
        steps["session_open"] = step["open"]
    for i, reading in enumerate(step["readings"], 1):
        steps["reading_%d" % i] = reading
    report = {
        "board": board, "port": port, "device": info,
        "vectors": vectors, "timings": timings,
        "heap": {"free_at_start": info["mem_free"], "free_after_vectors": ecdsa["mem_free"],
                 "lowest_during_ecdsa": sig["mem_low"], "lowest_during_ecqv": ecqv["mem_low"],
                 "peak_per_step": {name: part["heap_peak"] for name, part in steps.items() if "heap_peak" in part}},
        "session": step,
        "passed": not vectors["ecdsa"]["failed"] and not vectors["aes_ccm"]["failed"] and step["status"] != "fail",
        "wall_s": round(time.time() - started, 1),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / (board + ".json")).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    (out_dir / (board + ".txt")).write_text(render(report))
    return report


def render(report: dict) -> str:
    d = report["device"]
    lines = ["ledgerlink HIL report: %s on %s (MicroPython %s, %s)" % (report["board"], report["port"],
                                                                    d["version"], d["platform"]), ""]
    lines.append("%-18s %6s %6s" % ("vectors", "total", "failed"))
    for name, v in report["vectors"].items():
        lines.append("%-18s %6d %6d%s" % (name, v["total"], len(v["failed"]),
                                          "  tcId " + ",".join(map(str, v["failed"])) if v["failed"] else ""))
    lines += ["", "%-18s %4s %8s %8s %8s" % ("operation", "n", "min ms", "med ms", "max ms")]
    for name, t in report["timings"].items():
        lines.append("%-18s %4d %8d %8d %8d" % (name, t["n"], t["min_ms"], t["median_ms"], t["max_ms"]))
    lines += ["", "%-26s %10s" % ("heap", "bytes free")]
    for name, value in report["heap"].items():
        if name != "peak_per_step":
            lines.append("%-26s %10d" % (name, value))
    lines += ["", "%-26s %10s  %s" % ("peak heap per step", "bytes", "measure")]
    for name, peak in report["heap"]["peak_per_step"].items():
        lines.append("%-26s %10d  %s" % (name, peak["bytes"], MEASURES[peak["measure"]]))
    lines += [""] + render_session(report["session"])
    lines += ["", "result: %s" % ("PASS" if report["passed"] else "FAIL")]
    return "\n".join(lines) + "\n"


def _ms(value: int | None) -> str:
    return "-" if value is None else "%d" % value


def render_session(step: dict) -> list[str]:
    if step["status"] == "skipped":
        return ["session and receipt: skipped (%s)" % step["reason"]]
    lines = []
    opened = step.get("open", {})
    if "device_id" in opened:
        lines.append("session and receipt: device %s, broker %s" % (opened["device_id"], opened["broker"]))
    if "open_ms" in opened:
        lines.append("%-18s %8s %10s" % ("", "ms", "bytes free"))
        lines.append("%-18s %8d %10d" % ("open session", opened["open_ms"], opened["mem_free"]))
    if step["readings"]:
        lines += ["", "%-8s %6s %10s %8s %6s %10s  %s" % ("reading", "seq", "receipt ms", "check ms", "height",
                                                        "bytes free", "receipt")]
        for i, r in enumerate(step["readings"], 1):
            verdict = "verified" if r.get("valid") else ("NOT VERIFIED" if "valid" in r else "none")
            lines.append("%-8d %6s %10s %8s %6s %10s  %s" % (
                i, _ms(r.get("seq")), _ms(r.get("receipt_ms")), _ms(r.get("check_ms")), _ms(r.get("height")),
                _ms(r.get("mem_free")), verdict))
    lines.append("session: %s, %d of %d receipts verified on the board%s" % (
        step["status"].upper(), step["receipts_verified"], step["readings_asked"],
        ": " + step["reason"] if step.get("reason") else ""))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the ledgerlink HIL checks on a board through mpremote.")
    parser.add_argument("--port", required=True, help="serial port or socket://127.0.0.1:PORT")
    parser.add_argument("--board", required=True, help="board name for the report files")
    parser.add_argument("--out", type=Path, default=Path("hil-reports"))
    parser.add_argument("--cases", type=int, default=3, help="valid and invalid vectors per algorithm")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per operation")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per device program")
    parser.add_argument("--readings", type=int, default=2, metavar="N",
                        help="session step: readings published, each receipt checked on the board (default 2)")
    parser.add_argument("--session-wait", type=float, default=120.0, metavar="S",
                        help="session step: seconds to wait for the session and for each receipt (default 120)")
    parser.add_argument("--skip-session", action="store_true",
                        help="leave out the session and receipt step (it needs the gateway running)")
    parser.add_argument("--config", default=CONFIG_PATH, metavar="PATH",
                        help="the board's config file, relative to its working directory (default %s)" % CONFIG_PATH)
    args = parser.parse_args(argv)
    if args.readings < 1:
        parser.error("--readings must be at least 1")
    try:
        report = run_checks(args.port, args.board, args.out, args.cases, args.repeat, args.timeout,
                            not args.skip_session, args.readings, args.session_wait, args.config)
    except BoardError as exc:
        print("run_checks: error: %s: deploy first (tools/deploy.py) and check the port" % exc, file=sys.stderr)
        return 3
    sys.stdout.write(render(report))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
