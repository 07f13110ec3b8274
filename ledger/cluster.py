"""A local ledger cluster: keys, genesis and config generation, and node processes.

``python3 -m ledgerlink.ledger.cluster --nodes 4 --data DIR`` writes (once) ``DIR/cluster.json``
and ``DIR/keys/*.key`` (validator keys, an admin key and a gateway key, hex, mode 0600), and the
validators' FROST keys for threshold certificates with ``--threshold``: the validators run the dealerless DKG (t = 2f+1;
here all of them in this one process, each participant's secret state apart, which is fine for a
local set-up), each signing share goes to ``keys/validator<i>.share`` (mode 0600, never logged) and
the group key and verifying shares into the genesis (the chain record, so clients get them with a
proof). It starts one
``ledgerlink.ledger.node`` process per validator (logs in ``DIR/node<i>.log``, blocks in
``DIR/node<i>/``), prints where they listen and stops them cleanly on Ctrl-C. ``LocalCluster`` is
the same as a Python API for tests and benchmarks (start, stop, kill, restart single nodes; a node
may run as a ``ledgerlink.ledger.rogue`` Byzantine validator instead).
Private keys are never printed or logged.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ledgerlink.core import frost
from ledgerlink.core.backend import get_backend
from ledgerlink.ledger.consensus.messages import quorum
from ledgerlink.ledger.transport import CLIENT_PORT_OFFSET, ClusterConfig

DEFAULT_CONSENSUS = {"max_batch": 256, "batch_timeout_ms": 10, "view_change_timeout_ms": 1000,
                     "retransmit_ms": 250}


def write_key(path: Path, priv: bytes) -> None:
    """Write a hex private key readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, priv.hex().encode() + b"\n")
    finally:
        os.close(fd)
    os.chmod(path, 0o600)


def dkg_in_process(n: int, t: int, rng: Any, context: bytes) -> tuple[list[int], tuple[bytes, ...], bytes]:
    """Run the FROST KeyGen of ``frost`` among n participants in this process (each one's state kept
    apart, messages passed as the ceremony would): (signing shares by validator index, verifying shares
    by validator index, group key). For set-up and tests; a consortium runs it across its sites."""
    states = [frost.dkg_round1(i + 1, n, t, rng, context) for i in range(n)]
    broadcasts = [b for _, b in states]
    outgoing = [frost.dkg_round2(state, broadcasts) for state, _ in states]
    results = []
    for i, (state, _) in enumerate(states):
        mine = {j + 1: outgoing[j][i + 1] for j in range(n) if j != i}
        results.append(frost.dkg_finish(state, broadcasts, mine))
    group_key = results[0][2]
    verifying = results[0][1]
    if any(r[2] != group_key or r[1] != verifying for r in results):
        raise ValueError("participants disagree on the group key")
    return [r[0] for r in results], tuple(verifying[i + 1] for i in range(n)), group_key


def write_share(path: Path, share: int) -> None:
    """Write a FROST signing share (64 hex characters) readable by its owner only."""
    write_key(path, share.to_bytes(32, "big"))


def load_share(key_file: str | Path) -> int | None:
    """The FROST signing share stored beside a validator key file (``<name>.share``), or None."""
    path = Path(key_file).with_suffix(".share")
    if not path.exists():
        return None
    return int(path.read_text().strip(), 16)


def _ports_free(host: str, ports: list[int]) -> bool:
    for p in ports:
        with socket.socket() as s:
            try:
                s.bind((host, p))
            except OSError:
                return False
    return True


def _ephemeral_low() -> int:
    """Lowest port the kernel hands out to outgoing connections (Linux; 32768 elsewhere)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_base_port(n: int, host: str = "127.0.0.1") -> int:
    """A base port such that base+i and base+1000+i (i < n) are free now, all below the ephemeral range:
    there an outgoing connection (another test's, a broker's) could take one before the node binds it."""
    rnd = random.Random()
    top = min(40000, _ephemeral_low()) - CLIENT_PORT_OFFSET - n
    for _ in range(200):
        base = rnd.randrange(10000, max(10001, top))
        if _ports_free(host, [base + i for i in range(n)] + [base + CLIENT_PORT_OFFSET + i for i in range(n)]):
            return base
    raise RuntimeError("no free ports")


def generate(data_dir: str | Path, nodes: int = 4, base_port: int | None = None, chain_id: str = "ll-local",
             consensus: dict[str, Any] | None = None, threshold: bool = False) -> Path:
    """Write keys, genesis and cluster config into ``data_dir``; return the config path. With
    ``threshold`` the validators also get FROST keys (see the module docstring): every header then names
    the group key in its validators-hash, so each client's trust anchor must hold it."""
    d = Path(data_dir)
    keys = d / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    os.chmod(keys, 0o700)
    be = get_backend("cpython")
    pubs = []
    entries = []
    for i in range(nodes):
        priv = be.generate_private_key()
        write_key(keys / ("validator%d.key" % i), priv)
        pubs.append(be.public_key(priv, True).hex())
        entries.append({"key_file": "keys/validator%d.key" % i})
    frost_keys: dict[str, Any] = {}
    if threshold:
        shares, verifying, group_key = dkg_in_process(nodes, quorum(nodes), os.urandom, chain_id.encode())
        for i, share in enumerate(shares):
            write_share(keys / ("validator%d.share" % i), share)
        frost_keys = {"group_key": group_key.hex(), "verifying_shares": [v.hex() for v in verifying]}
    admin = be.generate_private_key()
    write_key(keys / "admin.key", admin)
    gateway = be.generate_private_key()
    write_key(keys / "gateway.key", gateway)
    cfg = {
        "chain_id": chain_id,
        "host": "127.0.0.1",
        "base_port": base_port if base_port is not None else free_base_port(nodes),
        "validators": pubs,
        "nodes": entries,
        "genesis": {
            "time_ms": int(time.time() * 1000),
            "admins": [{"key": be.public_key(admin, True).hex(), "attributes": {"name": "admin"}}],
            "devices": [{"key": be.public_key(gateway, True).hex(), "role": 3,
                         "attributes": {"name": "gateway"}}],
            **frost_keys,
        },
        "consensus": dict(DEFAULT_CONSENSUS, **(consensus or {})),
    }
    path = d / "cluster.json"
    path.write_text(json.dumps(cfg, indent=2) + "\n")
    return path


class LocalCluster:
    """Node processes of a generated cluster in ``data_dir``."""

    def __init__(self, data_dir: str | Path, nodes: int = 4, consensus: dict[str, Any] | None = None,
                 log_level: str = "INFO", metrics: bool = False,
                 rogues: dict[int, list[str]] | None = None, threshold: bool = False) -> None:
        """``rogues`` maps a validator index to the arguments of ``ledgerlink.ledger.rogue`` after the
        common ones (e.g. ``["--attack", "slow"]``): that node runs as a Byzantine validator.
        ``threshold``: a new cluster's validators get FROST keys (``generate``)."""
        self.data_dir = Path(data_dir)
        self.config_path = self.data_dir / "cluster.json"
        if not self.config_path.exists():
            generate(self.data_dir, nodes, consensus=consensus, threshold=threshold)
        self.config = ClusterConfig.load(self.config_path)
        self.log_level = log_level
        self.procs: dict[int, subprocess.Popen] = {}
        self.metrics_ports: dict[int, int] = {}   # node index -> /metrics port, when ``metrics``
        self.metrics = metrics
        self.rogues = dict(rogues or {})

    def node_args(self, i: int) -> list[str]:
        """Command line of node ``i`` (with ``--metrics-port`` when ``metrics``; the port stays across restarts)."""
        module = "ledgerlink.ledger.rogue" if i in self.rogues else "ledgerlink.ledger.node"
        args = [sys.executable, "-m", module, "--config", str(self.config_path),
                "--index", str(i), "--data", str(self.data_dir / ("node%d" % i)), "--log-level", self.log_level]
        args += self.rogues.get(i, [])
        if self.metrics and i not in self.rogues:          # metrics of the honest nodes
            if i not in self.metrics_ports:
                with socket.socket() as s:
                    s.bind((self.config.nodes[i].host, 0))
                    self.metrics_ports[i] = s.getsockname()[1]
            args += ["--metrics-port", str(self.metrics_ports[i])]
        return args

    def key(self, name: str) -> bytes:
        """A private key from ``keys/<name>.key`` (e.g. "admin", "gateway", "validator0")."""
        return bytes.fromhex((self.data_dir / "keys" / (name + ".key")).read_text().strip())

    def start_node(self, i: int) -> None:
        if i in self.procs and self.procs[i].poll() is None:
            return
        log = open(self.data_dir / ("node%d.log" % i), "ab")
        self.procs[i] = subprocess.Popen(
            self.node_args(i), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()

    def start(self, wait: float = 30.0) -> None:
        """Start every node and wait until each answers; if one does not, stop them all and raise
        (a caller whose ``start`` raised has nothing to stop, also as a context manager)."""
        try:
            for i in range(self.config.n):
                self.start_node(i)
            self.wait_ready(wait)
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout: float = 30.0, nodes: list[int] | None = None) -> None:
        """Wait until the client port of each running node accepts connections."""
        deadline = time.monotonic() + timeout
        for i in nodes if nodes is not None else list(self.procs):
            a = self.config.nodes[i]
            while True:
                p = self.procs[i]
                if p.poll() is not None:
                    raise RuntimeError("node %d exited with %s (see %s)" % (
                        i, p.returncode, self.data_dir / ("node%d.log" % i)))
                try:
                    with socket.create_connection((a.host, a.client_port), timeout=0.5):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise TimeoutError("node %d not ready" % i) from None
                    time.sleep(0.05)

    def alive(self, i: int) -> bool:
        p = self.procs.get(i)
        return p is not None and p.poll() is None

    def kill_node(self, i: int) -> None:
        """SIGKILL: no clean shutdown."""
        p = self.procs.get(i)
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait()

    def stop_node(self, i: int, timeout: float = 10.0) -> None:
        """SIGTERM and wait (SIGKILL after ``timeout``)."""
        p = self.procs.get(i)
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def restart_node(self, i: int, wait: float = 30.0) -> None:
        self.stop_node(i)
        self.start_node(i)
        self.wait_ready(wait, [i])

    def stop(self) -> None:
        for i in list(self.procs):
            p = self.procs[i]
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for i in list(self.procs):
            try:
                self.procs[i].wait(10)
            except subprocess.TimeoutExpired:
                self.procs[i].kill()
                self.procs[i].wait()

    def __enter__(self) -> "LocalCluster":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="ledgerlink cluster",
                                description="Start a local ledger cluster: keys and genesis (once), one process "
                                            "per validator on loopback; Ctrl-C stops it.")
    p.add_argument("--nodes", type=int, default=4, help="validators (default 4: tolerates one faulty node)")
    p.add_argument("--data", required=True, help="cluster directory (created; reused when it exists)")
    p.add_argument("--base-port", type=int, help="peer port of node 0 (client ports at +1000)")
    p.add_argument("--log-level", default="INFO", help="node log level: DEBUG, INFO (default), WARNING, ERROR")
    p.add_argument("--threshold", action="store_true",
                   help="a new cluster's validators run the FROST DKG: every block also gets a threshold certificate")
    args = p.parse_args(argv)
    data = Path(args.data)
    if not (data / "cluster.json").exists():
        generate(data, args.nodes, args.base_port, threshold=args.threshold)
    cluster = LocalCluster(data, args.nodes, log_level=args.log_level)
    stop = []
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    cluster.start()
    print("ledger cluster %r: %d nodes, config %s" % (cluster.config.chain_id, cluster.config.n,
                                                      cluster.config_path))
    for a in cluster.config.nodes:
        print("  node %d: peers %s:%d  clients %s:%d  log %s" % (
            a.index, a.host, a.peer_port, a.host, a.client_port, data / ("node%d.log" % a.index)))
    print("keys in %s (admin.key, gateway.key); Ctrl-C stops" % (data / "keys"))
    sys.stdout.flush()
    reported: set[int] = set()
    try:
        while not stop:
            time.sleep(0.2)
            for i in range(cluster.config.n):
                if not cluster.alive(i) and i not in reported:
                    reported.add(i)
                    print("node %d exited (%s)" % (i, cluster.procs[i].returncode))
    finally:
        cluster.stop()
        print("stopped")


if __name__ == "__main__":
    main()
