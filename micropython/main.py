"""Example board program: Wi-Fi, then one reading a minute to the gateway over MQTT.

Copy ``ledgerlink_client/`` and the compiled ``ledgerlink`` library to the board (``/lib``) and a
``ledgerlink.json`` with: site, broker, port, device_id (hex), session {key, base_iv, session_id} (hex)
or identity_key (hex) with "mode": "signed", wifi {ssid, password}. Readings are queued on flash in
``/ll`` and survive resets. To use umqtt.simple instead of the bundled client, install it with
``mip.install("umqtt.simple")`` and set "umqtt": true.
"""

import json
import os
import time

from ledgerlink_client import device, mqtt, queue, transport


def load_config(path="ledgerlink.json"):
    with open(path) as f:
        cfg = json.load(f)
    cfg["device_id"] = bytes.fromhex(cfg["device_id"])
    if "session" in cfg:
        cfg["session"] = dict((k, bytes.fromhex(v)) for k, v in cfg["session"].items())
    if "identity_key" in cfg:
        cfg["identity_key"] = bytes.fromhex(cfg["identity_key"])
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


def make_factory(cfg):
    client_id = "ll-" + cfg["device_id"].hex()
    if cfg.get("umqtt"):
        from umqtt.simple import MQTTClient as Umqtt

        from ledgerlink_client.umqtt_adapter import UmqttAdapter

        return lambda: UmqttAdapter(Umqtt(client_id, cfg["broker"], cfg.get("port", 1883), keepalive=60))
    return lambda: mqtt.MQTTClient(transport.open_socket(cfg["broker"], cfg.get("port", 1883)), client_id,
                                   keepalive=60)


def read_sensor():
    """Replace with the board's sensor; here the MCU temperature when the port has it."""
    try:
        import esp32

        return {"t": (esp32.raw_temperature() - 32) * 5 // 9}
    except ImportError:
        return {"up": time.ticks_ms()}


def main():
    cfg = load_config()
    connect_wifi(cfg["wifi"])
    try:
        os.mkdir("/ll")
    except OSError:
        pass
    if cfg.get("umqtt"):
        cfg["max_inflight"] = 1
    client = device.DeviceClient(cfg, make_factory(cfg), storage=queue.FileStorage("/ll"))
    while True:
        client.publish(read_sensor())
        start = time.ticks_ms()
        while time.ticks_diff(time.ticks_ms(), start) < 60000:
            client.step(500)
            while client.replies:
                print("gateway reply", client.replies.pop(0).get(0))


main()
