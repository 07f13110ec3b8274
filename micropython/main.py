"""Example board program: Wi-Fi, then one reading a minute to the gateway over MQTT.

Copy ``ledgerlink_client/`` and the compiled ``ledgerlink`` library to the board (``/lib``) and a
``ledgerlink.json`` (or use ``ledgerlink deploy`` and ``ledgerlink provision``, whose files
``load_config`` also reads) with: site, broker, port, identity_key (hex), ca_public (hex, the fog CA key: the
board opens its sessions itself), chain_id and validators (hex list: receipts are checked), optional
gateway_keys ({device id hex: key hex}), "mode" ("session", the default, or "signed"), wifi {ssid,
password}. Readings, the sequence counter, the session and the command record are kept on flash in
``ll/`` and survive resets; a counter file found missing or damaged makes the board open a new session.
To use umqtt.simple instead of the bundled client, install it with ``mip.install("umqtt.simple")`` and
set "umqtt": true.
"""

import json
import os
import time

from ledgerlink_client import device, mqtt, queue, transport


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def load_config(path="ledgerlink.json"):
    """The client config from ``path``, also in the layout ``ledgerlink deploy`` and ``provision`` write
    (broker {host, port}, validator_keys, the key in ``ledgerlink.key``, the chain, and after a key rotation
    the registered device id, in ``ledgerlink.id.json``)."""
    with open(path) as f:
        cfg = json.load(f)
    if isinstance(cfg.get("broker"), dict):
        cfg["tls_ca"] = cfg["broker"].get("tls_ca")        # the site CA (DER, hex): TLS to the broker
        cfg["port"] = cfg["broker"].get("port", 1883)
        cfg["broker"] = cfg["broker"]["host"]
    if "validators" not in cfg and "validator_keys" in cfg:
        cfg["validators"] = cfg["validator_keys"]
    if "identity_key" not in cfg:
        key = _read("ledgerlink.key")
        if key:
            cfg["identity_key"] = key.strip()
    ident = json.loads(_read("ledgerlink.id.json") or "{}")
    if "chain_id" not in cfg and ident:
        cfg["chain_id"] = ident["chain_id"]
    if ident.get("key_rotated"):            # ``ledgerlink provision --rotate-key``: the registered id stays
        cfg.update(device_id=ident["device_id"], key_rotated=True)
    for name in ("device_id", "identity_key", "ca_public", "group_key"):
        if name in cfg:
            cfg[name] = bytes.fromhex(cfg[name])
    if "validators" in cfg:
        cfg["validators"] = [bytes.fromhex(k) for k in cfg["validators"]]
    if "gateway_keys" in cfg:
        cfg["gateway_keys"] = dict((bytes.fromhex(k), bytes.fromhex(v)) for k, v in cfg["gateway_keys"].items())
    return cfg


def connect_wifi(wifi):
    import network

    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    if not wlan.isconnected():
        wlan.connect(wifi["ssid"], wifi["password"])
        for _ in range(100):
            if wlan.isconnected():
                break
            time.sleep_ms(100)
    return wlan.isconnected()


def make_factory(cfg, device_id):
    client_id = "ll-" + device_id.hex()
    if cfg.get("umqtt"):
        from umqtt.simple import MQTTClient as Umqtt

        from ledgerlink_client.umqtt_adapter import UmqttAdapter

        return lambda: UmqttAdapter(Umqtt(client_id, cfg["broker"], cfg.get("port", 1883), keepalive=60))
    call = globals().get("host_call")              # the virtual board's host sockets (--network)
    login = json.loads(_read("ledgerlink.mqtt.json") or "{}")    # the broker login ``ledgerlink provision`` stored
    ca = bytes.fromhex(cfg["tls_ca"]) if cfg.get("tls_ca") else None
    return lambda: mqtt.MQTTClient(transport.open_stream(cfg["broker"], cfg.get("port", 1883), call, tls_ca=ca),
                                   client_id, keepalive=60, username=login.get("username"),
                                   password=login.get("password"))


def read_sensor():
    """Replace with the board's sensor; here the MCU temperature when the port has it."""
    try:
        import esp32

        return {"t": (esp32.raw_temperature() - 32) * 5 // 9}
    except ImportError:
        return {"up": time.ticks_ms()}


def main():
    cfg = load_config()
    if "wifi" in cfg:
        connect_wifi(cfg["wifi"])
    try:
        os.mkdir("ll")
    except OSError:
        pass
    if cfg.get("umqtt"):
        cfg["max_inflight"] = 1
    factory = []
    client = device.DeviceClient(cfg, lambda: factory[0](), storage=queue.FileStorage("ll"),
                                 on_result=lambda result: print("gateway:", result))
    factory.append(make_factory(cfg, client.device_id))
    while True:
        client.publish(read_sensor())
        start = time.ticks_ms()
        while time.ticks_diff(time.ticks_ms(), start) < 60000:
            client.step(500)
            del client.replies[:]
        print("stats", client.stats)


main()
