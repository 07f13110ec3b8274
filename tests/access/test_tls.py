"""TLS to the site's broker (both brokers): the site CA that the stack makes, checked by every client."""

from __future__ import annotations

import ssl
import threading

from ledgerlink.device.client import Device
from ledgerlink.device.offline_queue import OfflineQueue
from ledgerlink.gateway.mqtt_client import MqttClient
from ledgerlink.tools.broker_access import client_certificate, client_tls_context
from tests.access.conftest import SITE, Client


def test_clients_check_the_broker_against_the_site_ca(stack, register):
    ca = client_tls_context(stack.tls["ca"])
    consumer = Client(stack, "ll-app-%s" % SITE, stack.consumer_login(), port=stack.broker_tls_port, tls=ca)
    assert consumer.accepted and consumer.subscribe("ll/%s/verified/+" % SITE) == 1
    consumer.close()
    try:
        Client(stack, "ll-app-%s" % SITE, stack.consumer_login(), port=stack.broker_tls_port,
               tls=ssl.create_default_context())
        raise AssertionError("a broker certificate outside the client's trust store was accepted")
    except ssl.SSLCertVerificationError:
        pass
    cert, key = client_certificate(stack.access.folder, "ll-app-%s" % SITE)
    with_cert = Client(stack, "ll-app-%s" % SITE, stack.consumer_login(), port=stack.broker_tls_port,
                       tls=client_tls_context(stack.tls["ca"], cert, key))
    assert with_cert.accepted
    with_cert.close()


def test_gateway_client_and_device_sdk_over_tls(stack, register, tmp_path):
    login = stack.consumer_login()
    gw_client = MqttClient("127.0.0.1", stack.broker_tls_port, login["username"], clean_start=True,
                           tls=client_tls_context(stack.tls["ca"]), **login).start()
    try:
        assert gw_client.wait_connected(10)
    finally:
        gw_client.stop()
    [dev] = register(1)
    receipts: list = []
    got = threading.Event()
    device = Device(dev.core, OfflineQueue(str(tmp_path / "q.db")), "127.0.0.1", stack.broker_tls_port,
                    password=dev.login()["password"], tls=client_tls_context(stack.tls["ca"]),
                    on_receipt=lambda r: (receipts.append(r), got.set()))
    device.start()
    try:
        assert device.wait_connected(10)
        device.publish_reading({"t": 1})
        assert got.wait(20) and receipts[0].valid
    finally:
        device.stop()
