"""Updates for a CPython ``Device`` (docs/protocol.md, "Updates"): the same ``update_agent`` and
``update_transport`` a board runs, over the device's paho client.

``attach(device, device_class, directory, config_path=..., app_prefix=...)`` makes the update state at
the first start (``UpdateAgent.provision``), finishes what a reset cut short (``boot``), and then, on
the device's I/O thread: at each connection subscribes to the device's ``fw`` topic and sends its
status (the versions it runs) on ``upd``; takes offers and chunks; and takes the first valid receipt
while a new version is on trial as its check-in; every valid receipt's header height bounds the age
of the proofs an offer may carry (``UpdateAgent.saw_header``). A timer thread calls ``tick`` every second: it rolls
back a version whose check-in is overdue and asks again for chunks that did not come (``stop`` ends it).
``restart_due`` tells the application that an app library was installed and takes effect at its next
start.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from ledgerlink.device.client import QOS, Device
from ledgerlink.protocol import update_agent as ua, update_transport as ut
from ledgerlink.protocol.codes import IMAGE_APP_LIBRARY

log = logging.getLogger(__name__)
TICK_S = 1.0


class DeviceUpdates:
    """The updates of one ``Device``: ``agent`` (UpdateAgent), ``client`` (UpdateClient), ``restart_due``."""

    def __init__(self, device: Device, agent: ua.UpdateAgent, clock: Callable[[], int] | None = None) -> None:
        self.device = device
        self.agent = agent
        core = device.core
        self.client = ut.UpdateClient(agent, signer=(core.device_id, lambda m: core.crypto.sign(core._identity(), m),
                                                     device.clock))    # version statements for the ledger
        self.topic_fw = device.core.topic(ut.DOWN_LEAF)
        self.topic_upd = device.core.topic(ut.UP_LEAF)
        self.restart_due = False
        self.clock = clock or (lambda: int(time.monotonic() * 1000))
        self._lock = threading.Lock()
        paho = device._client
        self._on_connect = paho.on_connect
        paho.on_connect = self._connected
        paho.message_callback_add(self.topic_fw, self._message)
        self._on_receipt = device.on_receipt
        device.on_receipt = self._receipt
        self._stopping = threading.Event()
        self._timer: threading.Thread | None = None

    def start(self) -> None:
        """Start the timer thread (``attach`` does)."""
        self._timer = threading.Thread(target=self._run, name="ll-updates", daemon=True)
        self._timer.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._timer is not None:
            self._timer.join(timeout=5)

    def _run(self) -> None:
        while not self._stopping.wait(TICK_S):
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - a storage error must not end the timer; it is logged
                log.exception("update tick failed")

    def _publish(self, messages: list[bytes]) -> None:
        for payload in messages:
            self.device._client.publish(self.topic_upd, payload, qos=QOS)

    def _connected(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self._on_connect(client, userdata, flags, reason_code, properties)
        if reason_code.is_failure:
            return
        client.subscribe(self.topic_fw, QOS)
        with self._lock:
            self._publish([self.client.status()] + self.client.resume())

    def _message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            before = self.agent.running().get(IMAGE_APP_LIBRARY)
            out = self.client.handle(msg.payload, self.clock())
            after = self.agent.running().get(IMAGE_APP_LIBRARY)
            if after != before and after is not None and after["trial"]:
                self.restart_due = True
            self._publish(out)

    def _receipt(self, result: Any) -> None:
        if self._on_receipt is not None:
            self._on_receipt(result)
        if not result.valid:
            return
        with self._lock:
            if getattr(result, "height", None) is not None:
                self.agent.saw_header(result.height)
            if any(e["trial"] for e in self.agent.running().values()):
                self.agent.checked_in()
                self._publish([self.client.status()])

    def status(self) -> dict:
        """What runs: {component: {"sequence", "digest", "version", "trial"}}."""
        with self._lock:
            return self.agent.running()

    def tick(self) -> list[int]:
        """Roll back the versions whose check-in is overdue and ask again for chunks that did not come;
        the components rolled back."""
        with self._lock:
            now = self.clock()
            done = self.agent.tick(now)
            if not self.device.connected:
                return done
            self._publish([self.client.status()] if done else self.client.retry(now))
            return done


def attach(device: Device, device_class: str, directory: str, config_path: str | None = None,
           app_prefix: str | None = None, trial_deadline_ms: int = ua.TRIAL_DEADLINE_MS,
           clock: Callable[[], int] | None = None) -> DeviceUpdates:
    """Give ``device`` its updates (before ``device.start()``): a configuration file at ``config_path`` and/or
    an app library in A/B slots ``app_prefix.0``/``.1``, for devices of class ``device_class``; the update
    state lives in ``directory``."""
    files = ua.Files()
    targets: list[Any] = []
    if config_path is not None:
        targets.append(ua.ConfigTarget(files, config_path))
    if app_prefix is not None:
        targets.append(ua.AppTarget(files, app_prefix))
    core = device.core
    agent = ua.UpdateAgent(directory, device_class, core.chain_id, core.validator_keys, targets, files,
                           core.crypto, trial_deadline_ms, group_key=core.group_key)
    agent.provision()
    updates = DeviceUpdates(device, agent, clock)
    agent.boot(updates.clock())
    updates.start()
    return updates
