"""``ledgerlink up``: a site started from a config file (given ports, a configured admin key) answers on the
dashboard, the broker and the ledger, stops cleanly on SIGINT without leftover processes, and refuses bad
configs with one line and exit 2 before writing anything."""

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from ledgerlink.core.backend import get_backend
from ledgerlink.core.errors import InvalidProof
from ledgerlink.ledger.client import LedgerClient
from ledgerlink.ledger.cluster import free_base_port
from ledgerlink.tools import up

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "ledgerlink.tools.cli"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def write_config(path, **fields):
    path.write_text(json.dumps(fields))
    return path


def _lines(proc, q):
    for line in proc.stdout:
        q.put(line)
    q.put(None)


def _rest(proc: subprocess.Popen, q: queue.Queue) -> list[str]:
    """Kill ``proc`` if it still runs; its remaining output lines."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    rest = []
    while (line := q.get(timeout=5)) is not None:
        rest.append(line)
    return rest


def _start_up(*args: str) -> tuple[subprocess.Popen, queue.Queue, str]:
    """``ledgerlink up ARGS`` in a subprocess; its output up to the "ready" line, and the rest in the queue."""
    proc = subprocess.Popen(CLI + ["up", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    q: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(proc, q), daemon=True).start()
    out: list[str] = []
    deadline = time.monotonic() + 60
    try:
        while not any(l.split("] ", 1)[-1].startswith("ready") for l in out):
            line = q.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, ("up exited", "".join(out), proc.stderr.read())
            out.append(line)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, q, "".join(out)


def test_up_runs_a_site_and_stops_on_sigint(tmp_path):
    subprocess.run(CLI + ["admin", "keygen", "--out", str(tmp_path / "admin.key")], check=True, capture_output=True)
    broker, http, base = free_port(), free_port(), free_base_port(4)
    cfg = write_config(tmp_path / "up.json", data_dir="site", site="hall-2", broker={"port": broker},
                       ledger={"nodes": 4, "base_port": base}, gateway={"http_port": http}, admin_key="admin.key")
    proc, q, text = _start_up("--config", str(cfg))
    try:
        assert "broker: mqtt://127.0.0.1:%d" % broker in text
        assert "client ports " + ", ".join("127.0.0.1:%d" % (base + 1000 + i) for i in range(4)) in text
        assert len(re.findall(r"validator \d: [0-9a-f]{66}", text)) == 4
        assert "admin key: %s" % (tmp_path / "admin.key") in text
        url = re.search(r"dashboard: (http://\S+)", text).group(1)
        assert url == "http://127.0.0.1:%d/" % http
        ca_public = re.search(r"board configs: chain_id 'll-hall-2', ca_public ([0-9a-f]{66}) ", text).group(1)
        ca_key = bytes.fromhex((tmp_path / "site" / "ledger" / "keys" / "gw-ca.key").read_text().strip())
        assert bytes.fromhex(ca_public) == get_backend("cpython").public_key(ca_key, True)
        assert "log in with the token in %s" % (tmp_path / "site" / "dashboard.token") in text
        with urllib.request.urlopen(_logged_in(url, tmp_path / "site"), timeout=10) as resp:
            assert resp.status == 200
        assert listening(broker)
        with LedgerClient(tmp_path / "site" / "ledger" / "cluster.json") as c:
            info = c.info()
            assert info["ok"] and c.validators()["chain_id"] == "ll-hall-2"
        # the configured admin key is the genesis admin: it can register a device
        reg = subprocess.run(CLI + ["admin", "--up-config", str(cfg), "register", "--demo-key",
                                    str(tmp_path / "dev.key"), "--name", "probe"], capture_output=True, text=True)
        assert reg.returncode == 0, reg.stderr
        assert not (tmp_path / "site" / "ledger" / "keys" / "admin.key").exists()
        _threshold_headers(tmp_path / "site" / "ledger", text)
        pids = [int(p) for p in re.search(r"processes: ([\d ]+)", text).group(1).split()]
        assert len(pids) == 6 and all(alive(p) for p in pids)

        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        rest = _rest(proc, q)
    assert "stopped" in rest[-1]
    assert proc.stderr.read() == ""
    deadline = time.monotonic() + 5
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in pids)
    assert not listening(broker) and not listening(http) and not listening(base + 1000)

    # the data dir is reused; a config that does not match it is refused before anything starts
    bad = write_config(tmp_path / "bad.json", data_dir="site", site="hall-2", ledger={"nodes": 7})
    p = subprocess.run(CLI + ["up", "--config", str(bad)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "holds a 4-node ledger" in p.stderr
    off = write_config(tmp_path / "off.json", data_dir="site", site="hall-2", ledger={"nodes": 4, "threshold": False})
    p = subprocess.run(CLI + ["up", "--config", str(off)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "with threshold header certificates but ledger.threshold is false" in p.stderr
    p = subprocess.run(CLI + ["up", "--check", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and "is usable" in p.stdout


def _threshold_headers(ledger_dir, text):
    """The first run's DKG: a 0600 signing share beside each validator key, the group key in the genesis and
    in the summary, and the nodes' blocks certified by one FROST signature a device checks with the group key."""
    from ledgerlink.protocol import spv

    cluster = json.loads((ledger_dir / "cluster.json").read_text())
    group_key = bytes.fromhex(cluster["genesis"]["group_key"])
    assert len(cluster["genesis"]["verifying_shares"]) == 4
    assert "threshold headers: group key %s (t = 3 of 4" % group_key.hex() in text
    assert "validator_keys and group_key as above" in text
    for i in range(4):
        share = ledger_dir / "keys" / ("validator%d.share" % i)
        assert share.stat().st_mode & 0o777 == 0o600
    keys = [bytes.fromhex(k) for k in cluster["validators"]]
    deadline = time.monotonic() + 20
    with LedgerClient(ledger_dir / "cluster.json") as c:
        while "threshold_header" not in (latest := c.latest()):
            assert time.monotonic() < deadline, latest
            time.sleep(0.2)
    header = spv.verify_threshold_header(latest["threshold_header"], cluster["chain_id"], keys, group_key)
    assert header.height == latest["height"]
    with pytest.raises(InvalidProof, match="different validator set"):
        spv.verify_certified_header(latest["certified_header"], cluster["chain_id"], keys)   # the anchor needs the key


def _dead_port():
    return free_port()


BAD = [
    ({"data_dir": "d"}, "lacks site"),
    ({"data_dir": "d", "site": "Plant 1"}, "must match"),
    ({"data_dir": "d", "site": "p", "broker": {"port": 70000}}, "port number"),
    ({"data_dir": "d", "site": "p", "gateway": {"http_port": "8080"}}, "must be an integer"),
    ({"data_dir": "d", "site": "p", "ledger": {"nodes": 3}}, "3f+1"),
    ({"data_dir": "d", "site": "p", "ledger": {"threshold": "yes"}}, "ledger.threshold must be true or false"),
    ({"data_dir": "d", "site": "p", "ledger": {"nodes": 1, "threshold": True}}, "threshold needs ledger.nodes >= 4"),
    ({"data_dir": "d", "site": "p", "brokr": {}}, "unknown config field brokr"),
    ({"data_dir": "d", "site": "p", "admin_key": "no-such-folder/admin.key"}, "folder"),  # a missing key is made
    ({"data_dir": "d", "site": "p", "broker": {"external": "127.0.0.1:%d"}}, "does not answer"),
    ({"data_dir": "d", "site": "p", "broker": {"external": "nohost"}}, "HOST:PORT"),
    ({"data_dir": "d", "site": "p", "broker": {"admin_login": "a.json"}}, "give broker.external"),
    ({"data_dir": "d", "site": "p", "broker": {"tls_ca": "ca.pem"}}, "makes its own site CA"),
]


@pytest.mark.parametrize("fields,message", BAD, ids=[m for _, m in BAD])
def test_bad_config_is_one_line_and_exit_2(tmp_path, fields, message):
    fields = json.loads(json.dumps(fields).replace("%d", str(_dead_port())))
    cfg = write_config(tmp_path / "up.json", **fields)
    p = subprocess.run(CLI + ["up", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ledgerlink up: config error: ") and message in lines[0], p.stderr
    assert p.stdout == ""
    assert sorted(os.listdir(tmp_path)) == ["up.json"]


def test_ports_in_use_and_bad_files(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        cfg = write_config(tmp_path / "up.json", data_dir="d", site="p", gateway={"http_port": busy})
        assert up.main(["--config", str(cfg)]) == 2
        assert "gateway.http_port 127.0.0.1:%d is in use" % busy in capsys.readouterr().err
    port = free_port()
    cfg = write_config(tmp_path / "up.json", data_dir="d", site="p", broker={"port": port},
                       gateway={"http_port": port})
    assert up.main(["--config", str(cfg)]) == 2
    assert "both port %d" % port in capsys.readouterr().err
    (tmp_path / "admin.key").write_text("zz\n")
    cfg = write_config(tmp_path / "up.json", data_dir="d", site="p", admin_key="admin.key")
    assert up.main(["--config", str(cfg)]) == 2
    assert "64 hex digits" in capsys.readouterr().err
    (tmp_path / "up.toml").write_text('data_dir = "d"\nsite = \n')
    assert up.main(["--config", str(tmp_path / "up.toml")]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    assert up.main(["--config", str(tmp_path / "none.json")]) == 2
    assert "cannot read config" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_toml_config_and_example(tmp_path):
    (tmp_path / "up.toml").write_text('data_dir = "data"\nsite = "plant-1"\n[broker]\nexternal = "mq.lan:1883"\n'
                                      '[ledger]\nnodes = 7\nbase_port = 30000\n[gateway]\nhttp_port = 8080\n')
    cfg = up.load_config(tmp_path / "up.toml")
    assert cfg.broker_external == ("mq.lan", 1883) and cfg.nodes == 7 and cfg.base_port == 30000
    assert cfg.data_dir == (tmp_path / "data").resolve() and cfg.chain_id == "ll-plant-1"
    assert cfg.admin_key_path == cfg.data_dir / "ledger" / "keys" / "admin.key"
    example = up.load_config(os.path.join(os.path.dirname(up.__file__), "up.example.json"))
    assert example.site == "plant-1" and example.admin_key_given


def test_external_broker_and_a_node_that_exits_is_started_again(tmp_path):
    from ledgerlink.tools.stack import find_mosquitto

    port = free_port()
    (tmp_path / "mq.conf").write_text("listener %d 127.0.0.1\nallow_anonymous true\npersistence false\n" % port)
    mq = subprocess.Popen([find_mosquitto(), "-c", str(tmp_path / "mq.conf")], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not listening(port):
            assert time.monotonic() < deadline and mq.poll() is None
            time.sleep(0.05)
        cfg = write_config(tmp_path / "up.json", data_dir="site", site="ext", ledger={"nodes": 1},
                           broker={"external": "127.0.0.1:%d" % port})
        proc, q, text = _start_up("--config", str(cfg))
        seen: list[str] = []
        try:
            assert "MQTT broker: external at 127.0.0.1:%d" % port in text
            assert text.count("broker accounts: none made on the external broker") == 1    # what to set up there
            assert "broker: mqtt://127.0.0.1:%d" % port in text
            pids = _pids_of(text)
            assert len(pids) == 2
            node = [p for p in pids if b"ledgerlink.ledger.node" in _cmdline(p)]
            assert len(node) == 1
            os.kill(node[0], signal.SIGKILL)
            _wait_line(q, seen, r"ledger node 0 exited with status -9 \(see .*node0\.log\); starting it again")
            _wait_line(q, seen, r"ledger node 0 restarted")
            status = _status(tmp_path / "site")
            assert "broker" not in status                     # an external broker is not ours to restart
            assert status["ledger node 0"]["restarts"] == 1 and alive(status["ledger node 0"]["pid"])
            pids.append(status["ledger node 0"]["pid"])
            lines = _stop_up(proc, q, seen)
        finally:
            if proc.poll() is None:
                _rest(proc, q)
        assert "stopped" in lines[-1]
        assert _all_gone(pids)
        assert mq.poll() is None and listening(port)          # an external broker is not ours to stop
    finally:
        mq.terminate()
        mq.wait(10)


def test_embedded_broker_site_and_broker_restart(tmp_path):
    broker = free_port()
    cfg = write_config(tmp_path / "up.json", data_dir="site", site="emb", broker={"port": broker},
                       ledger={"nodes": 1})
    proc, q, text = _start_up("--broker", "embedded", "--config", str(cfg))
    seen: list[str] = []
    try:
        assert "MQTT broker: embedded (ledgerlink.tools.mqtt_broker, MQTT 5 and 3.1.1) on 127.0.0.1:%d" % broker in text
        assert "broker: mqtt://127.0.0.1:%d" % broker in text and listening(broker)
        pids = _pids_of(text)
        assert len(pids) == 3
        [mq] = [p for p in pids if b"ledgerlink.tools.mqtt_broker" in _cmdline(p)]
        os.kill(mq, signal.SIGKILL)
        _wait_line(q, seen, r"the embedded MQTT broker exited with status -9 \(see %s\); starting it again"
                   % re.escape(str(tmp_path / "site" / "mqtt_broker.log")))
        _wait_line(q, seen, r"the embedded MQTT broker restarted")
        deadline = time.monotonic() + 10
        while not listening(broker):                          # on the same port
            assert time.monotonic() < deadline
            time.sleep(0.05)
        status = _status(tmp_path / "site")
        assert status["broker"]["restarts"] == 1 and status["broker"]["last_exit"] == -9
        pids.append(status["broker"]["pid"])
        lines = _stop_up(proc, q, seen)
    finally:
        if proc.poll() is None:
            _rest(proc, q)
    assert "stopped" in lines[-1]
    assert _all_gone(pids)


def test_mosquitto_asked_for_but_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("ledgerlink.tools.stack.find_mosquitto", lambda: None)
    cfg = write_config(tmp_path / "up.json", data_dir="d", site="p")
    assert up.main(["--check", "--broker", "mosquitto", "--config", str(cfg)]) == 2
    assert "--broker mosquitto needs mosquitto" in capsys.readouterr().err
    assert up.main(["--check", "--config", str(cfg)]) == 0          # auto: the embedded broker
    assert "is usable" in capsys.readouterr().out
    assert not (tmp_path / "d").exists()


# --- supervision: a crashed part is started again, the rest keep serving ---------------------------------


class _SiteDevice:
    """A registered device of a running ``up`` site that publishes readings and checks their receipts."""

    def __init__(self, site_dir, site: str, broker_port: int, seed: int) -> None:
        from ledgerlink.device.core import DeviceCore, MemoryCounter, SequenceCounter
        from ledgerlink.ledger.state import encoding as enc
        from ledgerlink.ledger.transport import ClusterConfig
        from tests.mqtt_helpers import subscriber

        cluster_path = site_dir / "ledger" / "cluster.json"
        cfg = ClusterConfig.load(cluster_path)
        keys = site_dir / "ledger" / "keys"
        be = get_backend("cpython")
        gateway_key = bytes.fromhex((keys / "gateway.key").read_text().strip())
        gateway_pub = be.public_key(gateway_key, True)
        group = cfg.genesis.get("group_key")        # the site's threshold headers: part of the trust anchor
        self.core = DeviceCore(bytes([seed]) * 32, site, SequenceCounter(MemoryCounter()), cfg.chain_id,
                               list(cfg.validators), gateway_keys={enc.device_id(gateway_pub): gateway_pub},
                               group_key=bytes.fromhex(group) if group else None)
        admin = bytes.fromhex((keys / "admin.key").read_text().strip())
        req = self.core.registration_request(int(time.time() * 1000), attributes={"name": "probe%d" % seed}).payload
        with LedgerClient(cluster_path) as c:
            res = c.submit(enc.register_tx(cfg.chain_id, admin, req, int(time.time() * 1000)))
        assert res.get("status") == "committed" and res.get("code") == 0, res
        from ledgerlink.tools.broker_access import SiteAccess

        login = SiteAccess(site_dir / "broker", site).add_device(self.core.device_id)
        self.app, self.q = subscriber(broker_port, "ll/%s/dev/%s/down" % (site, self.core.device_id.hex()),
                                      "test-up-dev-%d" % seed, login)

    def publish(self):
        out = self.core.reading({"t": time.time()}, int(time.time() * 1000))
        self.app.publish(out.topic, out.payload, qos=1).wait_for_publish(10)
        return out

    def receipts(self, frames, timeout: float) -> set[int]:
        """Seqs of ``frames`` whose valid receipt arrived within ``timeout`` seconds."""
        want = {f.frame_hash: f.seq for f in frames}
        got: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(got) < len(want) and time.monotonic() < deadline:
            try:
                _, payload = self.q.get(timeout=max(0.05, deadline - time.monotonic()))
            except queue.Empty:
                break
            result = self.core.handle_down(payload, int(time.time() * 1000))
            if type(result).__name__ == "ReceiptResult" and result.valid and result.frame_hash in want:
                got.add(want[result.frame_hash])
        return got

    def close(self) -> None:
        self.app.loop_stop()
        self.app.disconnect()


def _wait_line(q: queue.Queue, seen: list[str], pattern: str, timeout: float = 30) -> str:
    """The first output line (already seen or coming) that matches ``pattern``."""
    deadline = time.monotonic() + timeout
    while True:
        for line in seen:
            if re.search(pattern, line):
                return line
        line = q.get(timeout=max(0.1, deadline - time.monotonic()))
        assert line is not None, ("up exited", "".join(seen))
        seen.append(line)


def _status(site_dir) -> dict:
    return {p["part"]: p for p in json.loads((site_dir / "status.json").read_text())["parts"]}


def _pids_of(text: str) -> list[int]:
    return [int(p) for p in re.search(r"processes: ([\d ]+)", text).group(1).split()]


def _cmdline(pid: int) -> bytes:
    with open("/proc/%d/cmdline" % pid, "rb") as f:
        return f.read()


def _stop_up(proc, q, seen: list[str]) -> list[str]:
    proc.send_signal(signal.SIGINT)
    assert proc.wait(40) == 0
    return seen + _rest(proc, q)


def _logged_in(url: str, site_dir) -> urllib.request.Request:
    """A request for the dashboard with the site's token (``up`` makes it)."""
    return urllib.request.Request(url, headers={
        "Authorization": "Bearer " + (site_dir / "dashboard.token").read_text().strip()})


def _all_gone(pids: list[int], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not any(alive(p) for p in pids)


def test_a_killed_gateway_is_restarted_and_its_queued_readings_get_receipts(tmp_path):
    cfg = write_config(tmp_path / "up.json", data_dir="site", site="sup", ledger={"nodes": 4},
                       broker={"port": free_port()})
    proc, q, text = _start_up("--broker", "mosquitto", "--config", str(cfg))
    site_dir = tmp_path / "site"
    seen: list[str] = []
    dev = None
    started: list[int] = []
    try:
        broker = int(re.search(r"broker: mqtt://127.0.0.1:(\d+)", text).group(1))
        url = re.search(r"dashboard: (http://\S+)", text).group(1)
        started = _pids_of(text)
        [gw] = [p for p in started if b"ledgerlink.gateway.main" in _cmdline(p)]
        dev = _SiteDevice(site_dir, "sup", broker, 7)
        first = dev.publish()
        assert dev.receipts([first], 30) == {first.seq}

        os.kill(gw, signal.SIGKILL)
        _wait_line(q, seen, r"gateway exited with status -9 \(see .*gateway\.log\); starting it again in 0\.5 s")
        during = [dev.publish() for _ in range(5)]              # queued at the broker for the gateway's session
        _wait_line(q, seen, r"gateway restarted \(pid \d+, restart 1\)")
        _wait_line(q, seen, r"gateway subscribed again")
        after = [dev.publish() for _ in range(3)]
        assert dev.receipts(during + after, 60) == {f.seq for f in during + after}
        status = _status(site_dir)
        assert status["gateway"]["restarts"] == 1 and status["gateway"]["last_exit"] == -9
        assert status["gateway"]["state"] == "running" and alive(status["gateway"]["pid"])
        assert status["ledger node 0"]["restarts"] == 0 and status["broker"]["restarts"] == 0
        assert 'ledgerlink_site_restarts_total{part="gateway"} 1' in (site_dir / "status.prom").read_text()
        with urllib.request.urlopen(_logged_in(url, site_dir), timeout=10) as resp:   # back on its address
            assert resp.status == 200
        assert all(alive(p) for p in started if p != gw)          # the others kept running
        pids = started + [status["gateway"]["pid"]]
        lines = _stop_up(proc, q, seen)
    finally:
        if dev is not None:
            dev.close()
        if proc.poll() is None:
            _rest(proc, q)
    assert "stopped" in lines[-1]
    assert _all_gone(pids)


def test_a_killed_ledger_node_is_restarted_while_the_site_serves(tmp_path):
    cfg = write_config(tmp_path / "up.json", data_dir="site", site="sup4", ledger={"nodes": 4},
                       broker={"port": free_port()})
    proc, q, text = _start_up("--broker", "mosquitto", "--config", str(cfg))
    site_dir = tmp_path / "site"
    seen: list[str] = []
    dev = None
    try:
        broker = int(re.search(r"broker: mqtt://127.0.0.1:(\d+)", text).group(1))
        started = _pids_of(text)
        nodes = [p for p in started if b"ledgerlink.ledger.node" in _cmdline(p)]
        assert len(nodes) == 4
        dev = _SiteDevice(site_dir, "sup4", broker, 9)
        os.kill(nodes[0], signal.SIGKILL)
        _wait_line(q, seen, r"ledger node 0 exited with status -9")
        during = [dev.publish() for _ in range(3)]              # 3 of 4 nodes: the ledger still commits
        assert dev.receipts(during, 60) == {f.seq for f in during}
        _wait_line(q, seen, r"ledger node 0 restarted \(pid \d+, restart 1\)")
        os.kill(nodes[2], signal.SIGKILL)                       # another one, once node 0 is back
        _wait_line(q, seen, r"ledger node 2 exited with status -9")
        _wait_line(q, seen, r"ledger node 2 restarted")
        after = [dev.publish() for _ in range(3)]
        assert dev.receipts(after, 60) == {f.seq for f in after}
        status = _status(site_dir)
        assert [status["ledger node %d" % i]["restarts"] for i in range(4)] == [1, 0, 1, 0]
        assert status["gateway"]["restarts"] == 0 and all(alive(p) for p in started if p not in (nodes[0], nodes[2]))
        pids = started + [status["ledger node 0"]["pid"], status["ledger node 2"]["pid"]]
        lines = _stop_up(proc, q, seen)
    finally:
        if dev is not None:
            dev.close()
        if proc.poll() is None:
            _rest(proc, q)
    assert "stopped" in lines[-1]
    assert _all_gone(pids)
