"""Updates on a board (docs/protocol.md, "Updates"): the board's glue around ``ledgerlink.protocol.update_agent``.

``attach(client, ...)`` gives a ``device.DeviceClient`` its updates without changing it: its MQTT
objects are wrapped so that each connection subscribes to the device's ``fw`` topic and sends the
device's status (the versions it runs) on ``upd``; ``fw`` messages are taken out of ``poll`` and fed to
the ``UpdateClient``, whose requests go out at once; a valid receipt after a new version started is its
check-in. Nothing of it is imported before ``attach``: a board that never updates keeps none of it. The
agent, its checks and the transport are loaded for each message and forgotten after it (with what the
offer's proof check loaded); between messages only their state is kept, as plain data. Timers use the
device's ``ticks_diff`` (wrap-safe on a board).

Components: configuration (a file, switched by renames), app library (A/B slots: an .mpy set unpacked
into ``<prefix>.<slot>.d``, which ``app_path`` names at boot for ``sys.path``), firmware (``FirmwareTarget``:
ESP32 OTA partitions through ``esp32.Partition``); the last two are in ``update_app`` and
``update_firmware``, loaded only by a board that installs them (their names here still work). After an app or firmware install ``reboot_due`` is
set; the application resets when it suits it (``machine.reset()``), and ``boot`` at the next start
counts that start against the check-in.
"""

from ledgerlink.protocol.codes import IMAGE_APP_LIBRARY, IMAGE_FIRMWARE

TICK_EVERY_MS = 1000
# names of ``update_app`` and ``update_firmware`` (loaded by a board that installs an app library or firmware)
_APP_NAMES = ("app_path", "unpack_mpy_set")
_FIRMWARE_NAMES = ("BLOCK", "FirmwareTarget")


def __getattr__(name):
    if name in _APP_NAMES:
        from ledgerlink_client import update_app

        return getattr(update_app, name)
    if name in _FIRMWARE_NAMES:
        from ledgerlink_client import update_firmware

        return getattr(update_firmware, name)
    raise AttributeError(name)


class _Reads:
    def read(self, path):
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError:
            return None


class _UpdatingMQTT:
    """An MQTT object of the client with the device's update topics added."""

    def __init__(self, inner, updates):
        self._inner = inner
        self._updates = updates
        self._pids = []                 # packet ids of the update messages sent: their PUBACKs stay here

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def connect(self, *args):
        result = self._inner.connect(*args)
        u = self._updates
        self._inner.subscribe(u.topic_fw, 1)
        self._send(u.start())
        return result

    def _send(self, messages):
        for payload in messages:
            self._pids.append(self._inner.publish(self._updates.topic_upd, payload, 1))
        del self._pids[:-16]

    def poll(self, timeout_ms=0):
        events = self._inner.poll(timeout_ms)
        u = self._updates
        kept = []
        while events:
            event = events.pop(0)       # the list holds no copy of a message while it is handled
            if event[0] == "msg" and event[1] == u.topic_fw:
                payload = event[2]
                event = None
                self._send(u.message(payload))
            elif event[0] == "puback" and event[1] in self._pids:
                self._pids.remove(event[1])
            else:
                kept.append(event)
        self._send(u.tick())
        return kept


def _unpack(path, files):
    from ledgerlink_client.update_app import unpack_mpy_set

    unpack_mpy_set(path, files)


# loaded for one message and forgotten after it (with what the offer's proof check loaded), so a board keeps
# none of this code between messages: (package, module names)
_PER_MESSAGE = (("ledgerlink.protocol", ("update_agent", "update_check", "update_transport", "update_version", "spv")),
                ("ledgerlink.core", ("frost", "frost_verify", "smt_proof", "merkle", "p256_ct", "kdf")),
                ("ledgerlink_client", ("update_app",)))
_AGENT_FIELDS = ("state", "_pending", "_received", "_trial_start_ms", "_newest_height", "_saved_height")
_CLIENT_FIELDS = ("refusals", "_digest", "_asked_upto", "_heard_ms", "_status_ms", "stated", "status_due")


def _loaded_modules():
    import sys

    return [name for package, names in _PER_MESSAGE for name in names if package + "." + name in sys.modules]


def _forget(before):
    """Forget the modules of ``_PER_MESSAGE`` loaded since ``before`` (``_loaded_modules()``) was taken."""
    from ledgerlink_client.device import _unload

    for package, names in _PER_MESSAGE:
        _unload([name for name in names if name not in before], package)


class _Loaded:
    """``with updates.loaded() as (agent, client):`` the UpdateAgent and UpdateClient built from the state kept
    between messages; at the end their state is kept again and the update code forgotten (on MicroPython)."""

    def __init__(self, updates):
        self._updates = updates
        self._before = None
        self._pair = None

    def __enter__(self):
        self._before = _loaded_modules()
        self._pair = self._updates._build()
        return self._pair

    def __exit__(self, *exc):
        agent, client = self._pair
        self._pair = None
        u = self._updates
        u._agent_state = dict((name, getattr(agent, name)) for name in _AGENT_FIELDS)
        u._client_state = dict((name, getattr(client, name)) for name in _CLIENT_FIELDS)
        running = agent.running() if exc[0] is None else None
        u._trial = running is None or any(e["trial"] for e in running.values())
        if client.status_due:
            u._running = running if running is not None else agent.running()
        running = None
        firmware = u._targets[2]
        if firmware is not None:
            firmware.files = u._files   # not the agent's Files: it would keep the forgotten update_agent alive
        agent = client = firmware = None
        _forget(self._before)
        return False


class Updates:
    """A DeviceClient's updates (``attach``): ``running()``, ``reboot_due``; ``loaded()`` gives the
    UpdateAgent and UpdateClient for one use. Between messages only their state (plain data) is kept."""

    def __init__(self, device, device_class, directory, targets, files=None, ticks_ms=None):
        before = _loaded_modules()
        from ledgerlink.protocol import update_transport as ut

        self.topic_fw = device.protocol.topic(ut.DOWN_LEAF)
        self.topic_upd = device.protocol.topic(ut.UP_LEAF)
        self._status_every = ut.STATUS_EVERY_MS
        ut = None
        _forget(before)
        self.device = device
        self.device_class = device_class
        self.dir = directory
        self._targets = targets         # (config_path, app_prefix, firmware target or None)
        self._files = files
        self.reboot_due = False
        self.ticks_ms = ticks_ms or device.ticks_ms
        self.ticks_diff = device.ticks_diff
        self._last_tick = None
        self._agent_state = {}
        self._client_state = {}
        self._running = None            # what agent.running() said when a status became due
        self._trial = True              # a component may await its check-in (known after the first use)
        self._on_result = device.on_result
        device.on_result = self._result
        factory = device.mqtt_factory
        device.mqtt_factory = lambda: _UpdatingMQTT(factory(), self)

    def _build(self):
        from ledgerlink.protocol import update_agent as ua, update_transport as ut

        files = self._files or ua.Files()
        config_path, app_prefix, firmware = self._targets
        targets = []
        if config_path is not None:
            targets.append(ua.ConfigTarget(files, config_path))
        if app_prefix is not None:
            targets.append(ua.AppTarget(files, app_prefix, lambda path: _unpack(path, files)))
        if firmware is not None:
            firmware.files = files
            targets.append(firmware)
        d = self.device
        agent = ua.UpdateAgent(self.dir, self.device_class, d.config["chain_id"], d.config["validators"], targets,
                               files, d.protocol.crypto, group_key=d.protocol.group_key, ticks_diff=self.ticks_diff)
        for name, value in self._agent_state.items():
            setattr(agent, name, value)
        client = ut.UpdateClient(agent, self.ticks_diff)
        client.status_later = True      # the status, with its version statements, is made by ``_status``
        for name, value in self._client_state.items():
            setattr(client, name, value)
        return agent, client

    def loaded(self):
        return _Loaded(self)

    def running(self):
        """The agent's running(): {component: {"sequence", "digest", "version", "trial"}}."""
        with self.loaded() as (agent, client):
            return agent.running()

    def boot(self):
        """At the device's start: make the update state of a new device, finish what a reset cut short (a
        download's stored offer is checked again as a received one is, ``_check``)."""
        with self.loaded() as (agent, client):
            agent.provision()
            agent.boot(self.ticks_ms(), resume=False)
            agent.newest_height()       # read now: kept with the state, for the checks of offers
        agent = client = None
        stored = (self._files or _Reads()).read(self.dir + "/offer")
        if stored is None:
            return
        loaded_before = _loaded_modules()
        checked = self._check(stored)
        stored = None
        try:
            with self.loaded() as (agent, client):
                agent.resume(checked)
        finally:
            agent = client = checked = None
            _forget(loaded_before)      # update_check, which _check left loaded for the agent's use

    def start(self):
        """The status and the requests that resume a download, to send at each connection."""
        with self.loaded() as (agent, client):
            client.status_due = True
            out = client.resume()
        agent = client = None           # the with's names would keep the forgotten code alive
        return self._status() + out

    def _status(self):
        """[the status message] when one is due (``UpdateClient.status_due``), else []. Made with the agent's
        and the transport's code let go: a version statement's signature loads the code of the device
        key, and the two together do not fit a 64 KB heap."""
        state = self._client_state
        if not state.get("status_due"):
            return []
        before = _loaded_modules()
        from ledgerlink.protocol import update_version as uv

        d = self.device
        p = d.protocol
        running, self._running = self._running, None
        statements = uv.due_statements(state["stated"], running, d.config["chain_id"], p.device_id,
                                       self.device_class, lambda m: p.crypto.sign(p._identity(), m), d.time_ms())
        out = [uv.encode_status(self.device_class, running, state["refusals"], statements)]
        state["status_due"] = False
        uv = statements = None
        _forget(before)
        return out

    def _check_offer(self, payload):
        """For an offer in ``payload`` that the client would take, the outcome of its checks (``_check``);
        None otherwise."""
        if self._client_state.get("_digest") is not None:
            return None
        from ledgerlink.protocol import update_check as uc

        offer = uc.offer_in_message(payload)
        return None if offer is None else self._check(offer)

    def _check(self, offer):
        """The outcome of an offer's checks (the Signed, or the UpdateRefused), for ``UpdateAgent.offer``'s
        ``checked``; None before the agent's state was read. Made with only the checks' code loaded, not the
        agent's nor the transport's, and the proof checks' code forgotten after it: an offer's proofs are
        checked in the heap of one part."""
        import gc

        newest = self._agent_state.get("_newest_height")
        if newest is None:
            return None
        from ledgerlink.protocol import update_check as uc

        before = _loaded_modules()
        d = self.device
        gc.collect()
        try:
            outcome = uc.check_offer(offer, d.config["chain_id"], d.config["validators"], self.device_class,
                                     d.protocol.crypto, newest, uc.FRESH_HEIGHTS, d.protocol.group_key)
        except uc.UpdateRefused as exc:
            outcome = exc
        offer = uc = None
        _forget(before)
        return outcome

    def message(self, payload):
        """The ``upd`` messages that answer one ``fw`` message."""
        loaded_before = _loaded_modules()
        checked = self._check_offer(payload)
        try:
            with self.loaded() as (agent, client):
                before = agent.running()
                out = client.handle(payload, self.ticks_ms(), checked)
                payload = checked = None
                after = agent.running()
        finally:
            agent = client = checked = None
            _forget(loaded_before)
        for component in (IMAGE_APP_LIBRARY, IMAGE_FIRMWARE):
            if after.get(component) != before.get(component) and (after.get(component) or {}).get("trial"):
                self.reboot_due = True
        return self._status() + out

    def tick(self):
        """Roll back an overdue trial; the chunk requests to send again when a download stalled; the status
        again every ``update_transport.STATUS_EVERY_MS``. Idle (none of these due) it loads nothing."""
        now = self.ticks_ms()
        if self._last_tick is not None and self.ticks_diff(now, self._last_tick) < TICK_EVERY_MS:
            return []
        self._last_tick = now
        state = self._client_state
        status_ms = state.get("_status_ms")
        if (not self._trial and state.get("_digest") is None and status_ms is not None
                and self.ticks_diff(now, status_ms) < self._status_every):
            return []                   # nothing to roll back, ask again or repeat: no update code loaded
        with self.loaded() as (agent, client):
            if agent.tick(now):
                self.reboot_due = True
                client.status_due = True
                out = []
            else:
                out = client.retry(now)
        agent = client = None
        return self._status() + out

    def _result(self, result):
        if self._on_result is not None:
            self._on_result(result)
        if not getattr(result, "valid", False):
            return
        with self.loaded() as (agent, client):
            if getattr(result, "height", None) is not None:
                agent.saw_header(result.height)
            if not any(e["trial"] for e in agent.running().values()):
                return
            agent.checked_in()
            client.status_due = True
        agent = client = None
        status = self._status()
        if self.device.mqtt is not None:
            self.device.mqtt._send(status)


def attach(device, device_class, directory="/upd", config_path=None, app_prefix=None, firmware=False,
           partition=None, files=None):
    """Give ``device`` (a DeviceClient with "chain_id" and "validators" in its config) its updates: the
    components named (a config file, app library slots, ESP32 firmware) under class ``device_class``.
    Makes the update state at the first start; returns the Updates."""
    target = None
    if firmware:
        from ledgerlink_client.update_firmware import FirmwareTarget

        target = FirmwareTarget(files, directory + "/fw.progress", partition)
    updates = Updates(device, device_class, directory, (config_path, app_prefix, target), files)
    updates.boot()
    return updates
