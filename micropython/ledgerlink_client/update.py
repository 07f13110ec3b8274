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
ESP32 OTA partitions through ``esp32.Partition``). After an app or firmware install ``reboot_due`` is
set; the application resets when it suits it (``machine.reset()``), and ``boot`` at the next start
counts that start against the check-in.
"""

from ledgerlink.core import cbor
from ledgerlink.protocol.codes import IMAGE_APP_LIBRARY, IMAGE_FIRMWARE

BLOCK = 4096                    # flash erase block of an ESP32 partition
TICK_EVERY_MS = 1000


def unpack_mpy_set(slot_path, files=None):
    """Unpack an .mpy set (CBOR map {relative path: bytes}) into ``slot_path + ".d"``."""
    if files is None:
        from ledgerlink.protocol.update_agent import Files

        files = Files()
    folder = slot_path + ".d"
    _remove_tree(folder)
    files.mkdir(folder)
    with open(slot_path, "rb") as f:
        entries = cbor.loads(f.read(), max_depth=2)
    if not isinstance(entries, dict):
        raise OSError(22, "an .mpy set must be a map of paths to bytes")
    for name, data in entries.items():
        if (not isinstance(name, str) or not isinstance(data, bytes) or name.startswith("/") or ".." in name
                or not name):
            raise OSError(22, "bad entry in .mpy set")
        parts = name.split("/")
        path = folder
        for part in parts[:-1]:
            path = path + "/" + part
            files.mkdir(path)
        files.write(folder + "/" + name, data)


def _remove_tree(path):
    import os

    try:
        entries = list(os.ilistdir(path)) if hasattr(os, "ilistdir") else [(n, 0) for n in os.listdir(path)]
    except OSError:
        return
    for entry in entries:
        child = path + "/" + entry[0]
        try:
            os.remove(child)
        except OSError:
            _remove_tree(child)
    os.rmdir(path)


def app_path(directory, prefix):
    """At boot: the folder of the app library slot the update state names (for ``sys.path``), or None for
    the library the board was deployed with (no update, or rolled back to it)."""
    from ledgerlink.protocol import update_agent as ua

    raw = ua.Files().read(directory + "/state")
    try:
        entry = cbor.loads(raw)[1].get(IMAGE_APP_LIBRARY) if raw else None
    except Exception:                   # a damaged state: the deployed library, and updates refused
        return None
    if not entry or not ua._entry_ok(IMAGE_APP_LIBRARY, entry) or entry.get(ua._DIGEST) is None:
        return None
    return "%s.%d.d" % (prefix, entry.get(ua._SLOT, 0))


class FirmwareTarget:
    """The firmware in ESP32 OTA partitions (``esp32.Partition``, or a class with its interface): chunks go
    to ``get_next_update()`` through the extended block protocol (a block erased with ``ioctl(6, block)``
    when its first chunk comes, then ``writeblocks(block, data, offset)``: no 4 KB buffer on the heap);
    the count of whole blocks written is kept in ``progress``, so a reset resumes at a block boundary.
    The switch is ``set_boot``, the check-in ``mark_app_valid_cancel_rollback``. The chunk size must
    divide the 4096-byte block."""

    component = IMAGE_FIRMWARE

    def __init__(self, files, progress, partition=None):
        if partition is None:
            from esp32 import Partition as partition
        self.partition = partition
        self.files = files
        self.progress = progress
        self._bytes = 0                 # bytes written in this start (from the resumed block boundary on)
        self._blocks = None

    def _by_slot(self, slot):
        found = self.partition.find(self.partition.TYPE_APP, label="ota_%d" % slot)
        if not found:
            raise OSError(2, "no partition ota_%d" % slot)
        return found[0]

    def _next(self):
        return self.partition(self.partition.RUNNING).get_next_update()

    def _written(self):
        if self._blocks is None:
            raw = self.files.read(self.progress)
            try:
                self._blocks = int(raw) if raw else 0
            except ValueError:
                self._blocks = 0
        return self._blocks

    def set_running(self, entry):
        from ledgerlink.protocol.update_agent import _PREVIOUS

        if entry is None or _PREVIOUS not in entry:
            self.partition.mark_app_valid_cancel_rollback()     # also after a check-in whose mark was cut short

    def received(self, chunk_size):
        if BLOCK % chunk_size:
            from ledgerlink.protocol import update_check as uc

            raise uc.UpdateRefused(uc.UPDATE_UNSUPPORTED, "firmware chunks must divide %d bytes" % BLOCK)
        self._bytes = self._written() * BLOCK
        return self._bytes

    def write(self, offset, data):
        block, within = divmod(offset, BLOCK)
        part = self._next()
        if within == 0:
            part.ioctl(6, block)
        part.writeblocks(block, data, within)
        self._bytes = offset + len(data)
        if within + len(data) == BLOCK:
            self._blocks = block + 1
            self.files.write(self.progress, b"%d" % self._blocks)

    def measure(self, size):
        import hashlib

        part = self._next()
        h = hashlib.sha256()
        buf = bytearray(256)
        have = min(size, self._bytes)
        at = 0
        while at < have:
            n = min(256, have - at)
            view = memoryview(buf)[:n]
            part.readblocks(at // BLOCK, view, at % BLOCK)
            h.update(view)
            at += n
        return h.digest(), have

    def discard(self):
        self._bytes = 0
        self._blocks = 0
        self.files.remove(self.progress)

    def prepare(self, entry):
        label = self._next().info()[4]
        return int(label.split("_")[-1])

    def switch(self, entry):
        from ledgerlink.protocol.update_agent import _SLOT

        self._by_slot(entry[_SLOT]).set_boot()
        self.files.remove(self.progress)
        self._blocks = 0

    def revert(self, entry):
        from ledgerlink.protocol.update_agent import _SLOT

        self._by_slot(entry[_SLOT]).set_boot()

    def confirm(self, entry):
        self.partition.mark_app_valid_cancel_rollback()


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


# loaded for one message and forgotten after it (with what the offer's proof check loaded), so a board keeps
# none of this code between messages: (package, module names)
_PER_MESSAGE = (("ledgerlink.protocol", ("update_agent", "update_check", "update_transport", "update_version", "spv")),
                ("ledgerlink.core", ("frost", "frost_verify", "smt_proof", "merkle")))
_AGENT_FIELDS = ("state", "_pending", "_received", "_trial_start_ms", "_newest_height", "_saved_height")
_CLIENT_FIELDS = ("refusals", "_digest", "_asked_upto", "_heard_ms", "_status_ms", "stated")


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
        agent = client = None
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
            targets.append(ua.AppTarget(files, app_prefix, lambda path: unpack_mpy_set(path, files)))
        if firmware is not None:
            firmware.files = files
            targets.append(firmware)
        d = self.device
        agent = ua.UpdateAgent(self.dir, self.device_class, d.config["chain_id"], d.config["validators"], targets,
                               files, d.protocol.crypto, group_key=d.protocol.group_key, ticks_diff=self.ticks_diff)
        for name, value in self._agent_state.items():
            setattr(agent, name, value)
        p = d.protocol
        client = ut.UpdateClient(agent, self.ticks_diff, (p.device_id, lambda m: p.crypto.sign(p._identity(), m),
                                                          d.time_ms))     # version statements, signed when due
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
        """At the device's start: make the update state of a new device, finish what a reset cut short."""
        with self.loaded() as (agent, client):
            agent.provision()
            agent.boot(self.ticks_ms())

    def start(self):
        """The status and the requests that resume a download, to send at each connection."""
        with self.loaded() as (agent, client):
            return [client.status()] + client.resume()

    def message(self, payload):
        """The ``upd`` messages that answer one ``fw`` message."""
        import gc

        with self.loaded() as (agent, client):
            before = agent.running()
            gc.collect()                # an offer is checked in the heap that is free now
            out = client.handle(payload, self.ticks_ms())
            payload = None
            after = agent.running()
        for component in (IMAGE_APP_LIBRARY, IMAGE_FIRMWARE):
            if after.get(component) != before.get(component) and (after.get(component) or {}).get("trial"):
                self.reboot_due = True
        return out

    def tick(self):
        """Roll back an overdue trial; the chunk requests to send again when a download stalled."""
        now = self.ticks_ms()
        if self._last_tick is not None and self.ticks_diff(now, self._last_tick) < TICK_EVERY_MS:
            return []
        self._last_tick = now
        with self.loaded() as (agent, client):
            if agent.tick(now):
                self.reboot_due = True
                return [client.status()]
            return client.retry(now)

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
            status = client.status()
        if self.device.mqtt is not None:
            self.device.mqtt._send([status])


def attach(device, device_class, directory="/upd", config_path=None, app_prefix=None, firmware=False,
           partition=None, files=None):
    """Give ``device`` (a DeviceClient with "chain_id" and "validators" in its config) its updates: the
    components named (a config file, app library slots, ESP32 firmware) under class ``device_class``.
    Makes the update state at the first start; returns the Updates."""
    target = FirmwareTarget(files, directory + "/fw.progress", partition) if firmware else None
    updates = Updates(device, device_class, directory, (config_path, app_prefix, target), files)
    updates.boot()
    return updates
