"""Gateway process: ``python3 -m ledgerlink.gateway.main --config FILE``.

The config (JSON, or TOML when the name ends in .toml)::

    {
      "site": "plant-1",
      "mqtt": {"host": "127.0.0.1", "port": 1883, "client_id": "gw-plant-1-a", "shared": true,
               "receive_maximum": 1000, "client": "ledgerlink",
               "credentials": "broker/credentials/gw-plant-1-a.json",
               "tls": {"ca": "broker/tls/ca.pem", "cert": "gw.pem", "key": "gw.key"}},
      "store": "gateway.db",
      "keys": {"identity": "keys/gateway.key", "ca": "keys/gw-ca.key", "site": "keys/gw-site.key"},
      "ledger": {"cluster": "cluster.json"},
      "trust": {"chain_id": "...", "validators": ["<hex key>", ...]},
      "limits": {"rate_per_s": 10, "burst": 20, ...},
      "batch": {"max": 256, "interval_ms": 100},
      "http": {"host": "127.0.0.1", "port": 8080},
      "verify_threads": 2,
      "anon": {"fog_key": "keys/anon-fog.key", "cloud_public": "<hex key>", "store": "anon-fog.sqlite",
               "client_id": "ll-anonfog-plant-1-1", "credentials": "broker/credentials/ll-anonfog-plant-1-1.json"}
    }

Key files hold a hex private key (as written by ``ledgerlink.ledger.cluster``); ``identity`` is the
gateway's registered ledger key (role gateway), ``ca`` its fog CA key and ``site`` its ECDH key
(``ca`` and ``site`` fall back to ``identity`` when not given; separate keys are better). ``http``
(optional) starts the dashboard and ``/metrics`` (see ``ledgerlink.gateway.dashboard``). ``trust`` defaults to
the chain id and validator keys of the cluster file. Relative paths are relative to the config file.
``mqtt.credentials`` (optional) is the broker account's login file (``{"username", "password"}``, as
``ledgerlink.tools.broker_access`` writes it; the client id must be its username); ``mqtt.tls``
(optional) connects with TLS, checking the broker's certificate against ``ca`` (``cert`` and ``key``: a
client certificate, when the broker asks for one).
``verify_threads`` (default: $LEDGERLINK_VERIFY_THREADS, else one per core, at most 4) checks each group's
signatures on that many threads ahead of the checks (``ledgerlink.gateway.verify_ahead``); 1 checks them
on the check thread. ``mqtt.client`` picks the MQTT client: "ledgerlink" (the gateway's own, ``ledgerlink.gateway.mqtt_client``)
or "paho" (paho-mqtt); without it, $LEDGERLINK_MQTT_CLIENT, else the default of
``ledgerlink.gateway.mqtt_adapter``. Keys are never logged. SIGINT/SIGTERM stop the gateway cleanly.

Several gateway processes of one site on one host share the load: give them the same ``site``, keys,
``store`` file and ``mqtt.shared``, and each its own stable ``mqtt.client_id`` (it names the process's
rows in the shared store, so a restarted process anchors what it had accepted). Sessions opened
through one process are then known to all, and a sequence number is accepted once across them.

``anon`` (optional) runs the fog's anonymous-session service (``ledgerlink.gateway.anon_mqtt``, docs/protocol.md
"Anonymous sessions") on its own MQTT connection (``client_id``, ``credentials``, the ``mqtt`` host, port and
TLS): ``fog_key`` is its request key (devices encrypt to its public key; the file must be mode 0600, else
the gateway does not start), ``cloud_public`` the cloud side's escrow public key (hex, compressed), ``store``
its primaryHash and replay tables (SQLite, shared by the site's gateway processes); it signs spends and
grants with the ``identity`` key.

``LEDGERLINK_PROFILE_DIR=DIR`` writes a cProfile of the gateway's threads to ``DIR/gateway-<pid>.prof`` at exit
(times are the threads' CPU time, so waits for the GIL, locks and sockets do not count).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tomllib
from pathlib import Path
from typing import Any

from ledgerlink.gateway.batcher import Batcher
from ledgerlink.gateway.checks import GatewayCore, GatewayKeys, Limits
from ledgerlink.gateway.dashboard import start_for
from ledgerlink.gateway.mqtt_adapter import DEFAULT_CLIENT, RECEIVE_MAXIMUM, MqttGateway
from ledgerlink.gateway.service import GatewayService
from ledgerlink.gateway.store import Store

log = logging.getLogger("ledgerlink.gateway")


def load_config(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    data = tomllib.loads(p.read_text()) if p.suffix == ".toml" else json.loads(p.read_text())
    data["_dir"] = str(p.resolve().parent)
    return data


def _path(cfg: dict[str, Any], value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else Path(cfg["_dir"]) / p


def _key(cfg: dict[str, Any], value: str) -> bytes:
    key = bytes.fromhex(_path(cfg, value).read_text().strip())
    if len(key) != 32:
        raise SystemExit("key file %s must hold a 32-byte hex key" % value)
    return key


def default_verify_threads() -> int:
    """Signature-checking threads without ``verify_threads`` in the config: $LEDGERLINK_VERIFY_THREADS, else
    one per core, at most 4."""
    return int(os.environ.get("LEDGERLINK_VERIFY_THREADS") or 0) or max(1, min(4, os.cpu_count() or 1))


def build(cfg: dict[str, Any]) -> MqttGateway:
    """Objects of a gateway from its config (connects to nothing yet)."""
    from ledgerlink.ledger.client import LedgerClient
    from ledgerlink.ledger.transport import ClusterConfig

    site = cfg["site"]
    keys_cfg = cfg["keys"]
    identity = _key(cfg, keys_cfg["identity"])
    keys = GatewayKeys(identity, _key(cfg, keys_cfg["ca"]) if "ca" in keys_cfg else identity,
                       _key(cfg, keys_cfg["site"]) if "site" in keys_cfg else identity)
    cluster_path = _path(cfg, cfg["ledger"]["cluster"])
    trust = cfg.get("trust") or {}
    cluster = ClusterConfig.load(cluster_path)
    chain_id = trust.get("chain_id", cluster.chain_id)
    validators = [bytes.fromhex(k) for k in trust["validators"]] if "validators" in trust else list(cluster.validators)
    limits = Limits(**cfg.get("limits", {}))
    group_hex = trust.get("group_key", cluster.genesis.get("group_key"))
    group_key = bytes.fromhex(group_hex) if group_hex else None
    core = GatewayCore(site, keys, chain_id, validators, limits, group_key=group_key)
    store = Store(_path(cfg, cfg.get("store", "gateway-%s.db" % site)),
                  owner=str(cfg.get("mqtt", {}).get("client_id", "")), window=limits.window)
    ledger = LedgerClient(cluster_path)
    batch = cfg.get("batch", {})
    batcher = Batcher(store, ledger, site, chain_id, validators, keys.identity, max_batch=int(batch.get("max", 256)),
                      interval_ms=int(batch.get("interval_ms", 100)), group_key=group_key)
    mq = cfg.get("mqtt", {})
    threads = int(cfg.get("verify_threads", default_verify_threads()))
    login = json.loads(_path(cfg, mq["credentials"]).read_text()) if "credentials" in mq else None
    tls = None
    if "tls" in mq:
        from ledgerlink.tools.broker_access import client_tls_context

        t = mq["tls"]
        tls = client_tls_context(_path(cfg, t["ca"]), *(_path(cfg, t[k]) for k in ("cert", "key") if k in t))
    return MqttGateway(GatewayService(core, store, threads), batcher, ledger, site, mq.get("host", "127.0.0.1"),
                       int(mq.get("port", 1883)), mq.get("client_id", "ll-gw-%s-%d" % (site, os.getpid())),
                       shared=bool(mq.get("shared", True)), batch_interval_ms=int(batch.get("interval_ms", 100)),
                       receive_maximum=int(mq.get("receive_maximum", RECEIVE_MAXIMUM)),
                       client=str(mq.get("client") or os.environ.get("LEDGERLINK_MQTT_CLIENT") or DEFAULT_CLIENT),
                       login=login and {"username": login["username"], "password": login["password"]}, tls=tls)


def start_anon(cfg: dict[str, Any], gw: MqttGateway) -> Any:
    """The fog's anonymous-session service of ``cfg["anon"]``, started (None without it); SystemExit when
    its key file is readable by others than the owner or the escrow key is not a P-256 point."""
    a = cfg.get("anon")
    if not a:
        return None
    from ledgerlink.core import p256
    from ledgerlink.core.errors import LedgerlinkError
    from ledgerlink.gateway.anon_fog import AnonFog, AnonService, AnonStore
    from ledgerlink.gateway.anon_mqtt import AnonMqtt
    from ledgerlink.gateway.mqtt_client import MqttClient
    from ledgerlink.ledger.client import LedgerClient

    key_path = _path(cfg, a["fog_key"])
    if os.stat(key_path).st_mode & 0o077:
        raise SystemExit("anon.fog_key %s must be mode 0600 (it opens every anonymous request)" % key_path)
    try:
        cloud_public = bytes.fromhex(a["cloud_public"])
        p256.decode_point(cloud_public)
    except (ValueError, LedgerlinkError):
        raise SystemExit("anon.cloud_public must be the cloud's escrow public key (P-256 point, hex)") from None
    core = gw.service.core
    fog = AnonFog(gw.site, core.chain_id, list(core.validator_keys), _key(cfg, a["fog_key"]), core.keys.identity,
                  cloud_public, None, AnonStore(str(_path(cfg, a.get("store", "anon-fog.sqlite")))), os.urandom,
                  group_key=core.group_key)
    mq = cfg.get("mqtt", {})
    login = json.loads(_path(cfg, a["credentials"]).read_text()) if "credentials" in a else {}
    tls = None
    if "tls" in mq:
        from ledgerlink.tools.broker_access import client_tls_context

        tls = client_tls_context(*(_path(cfg, mq["tls"][k]) for k in ("ca", "cert", "key") if k in mq["tls"]))
    client = MqttClient(mq.get("host", "127.0.0.1"), int(mq.get("port", 1883)), a["client_id"],
                        username=login.get("username"), password=login.get("password"), tls=tls)
    service = AnonMqtt(AnonService(fog, LedgerClient(_path(cfg, cfg["ledger"]["cluster"]))), client).start()
    client.start()
    log.info("anonymous sessions: fog request key %s", fog.public_key.hex())
    return service


def _profiled(run: Any, path: str) -> None:
    """``run()`` with the threads it starts profiled too (one profile per thread, merged into ``path``)."""
    import cProfile
    import pstats
    import threading
    import time

    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()
    start = threading.Thread.run

    def run_profiled(self: threading.Thread) -> None:
        prof = cProfile.Profile(time.thread_time)
        with lock:
            profiles.append(prof)
        prof.runcall(start, self)

    threading.Thread.run = run_profiled  # type: ignore[method-assign]
    main_prof = cProfile.Profile(time.thread_time)
    try:
        main_prof.runcall(run)
    finally:
        threading.Thread.run = start  # type: ignore[method-assign]
        with lock:
            for prof in profiles:
                prof.create_stats()
            stats = pstats.Stats(main_prof)
            for prof in profiles:
                if prof.stats:
                    stats.add(prof)
        stats.dump_stats(path)


def _wait_for_go() -> list[str] | None:
    """As a warm standby: import what ``build`` and ``run`` import later, then wait for a line ``go`` on stdin,
    optionally followed by a JSON list [config path, log path]; that list ([] for a plain ``go``), or None at
    the end of input (the supervisor stops the standby)."""
    import ledgerlink.ledger.client  # noqa: F401 - imported now, not after the start
    import ledgerlink.ledger.transport  # noqa: F401

    line = sys.stdin.readline()
    if not line.startswith("go"):
        return None
    rest = line[2:].strip()
    return [str(x) for x in json.loads(rest)] if rest else []


def _log_to(path: str) -> None:
    """Send this process's stdout and stderr to the end of ``path`` (made with mode 0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="ledgerlink gateway", formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Run one gateway from its config file, until SIGINT or SIGTERM.",
                                epilog=__doc__[__doc__.index("The config"):])
    p.add_argument("--config", help="gateway config (JSON or TOML; format below); required")
    p.add_argument("--log-level", default=os.environ.get("LEDGERLINK_LOG", "INFO"),
                   help="DEBUG, INFO, WARNING or ERROR (default $LEDGERLINK_LOG, else INFO)")
    p.add_argument("--standby", action="store_true",
                   help="import everything, then wait for a line 'go' on stdin before starting, optionally followed by "
                        "a JSON list [config, log file] (a supervisor's warm standby: a restart then skips the "
                        "interpreter's start and imports); exit at end of input")
    args = p.parse_args(argv)
    if args.standby:
        go = _wait_for_go()
        if go is None:
            return
        if go:
            args.config = go[0]
            _log_to(go[1])
    if not args.config:
        p.error("--config is required")
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s gateway %(name)s %(levelname)s %(message)s")
    cfg = load_config(args.config)
    gw = build(cfg)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: gw.stop())
    log.info("gateway %s of site %s starting", gw.service.core.gateway_name, gw.site)
    dashboard = start_for(gw, cfg)
    anon = start_anon(cfg, gw)
    prof_dir = os.environ.get("LEDGERLINK_PROFILE_DIR")
    try:
        if prof_dir:
            _profiled(gw.run, os.path.join(prof_dir, "gateway-%d.prof" % os.getpid()))
        else:
            gw.run()
    finally:
        if dashboard is not None:
            dashboard.stop()
        if anon is not None:
            anon.stop()
            anon.client.stop()
            anon.service.ledger.close()
        gw.ledger.close()
        gw.service.store.close()
    log.info("gateway stopped")


if __name__ == "__main__":
    main()
