"""The device's side of an update: state, download, install, check-in and rollback (docs/protocol.md, "Updates").

One implementation for the CPython SDK and the MicroPython client: everything goes through ``Files``
(``open`` and ``os``, the same on both) and the component targets (``ConfigTarget``, ``AppTarget``,
a firmware target from the board glue). ``UpdateAgent``:

- ``offer(data)`` checks an offer (``update_check``), then that the component is installed here, its
  sequence is above the accepted one, no earlier update of it awaits its check-in and its dependencies
  are installed; it keeps the offer, so a reset resumes the download (``pending``);
- ``chunk(index, data)`` writes chunks in order; ``next_chunk()`` is the one to ask for;
- ``finish()`` checks size and digest, then installs: the new state (the commit point, written as
  ``state.new`` and renamed over ``state``) records the new sequence, the new version and the old one,
  then the target switches; ``boot()`` finishes a switch or a rollback a reset cut short;
- ``checked_in()`` keeps the new versions (drops the old ones); ``boot()`` after the second start
  without a check-in, or ``tick(now_ms)`` past the deadline, rolls a new version back. The accepted
  sequence is never lowered, also not by a rollback.

Protects against: rollback to an older release (the sequence, persisted before the switch, is never
lowered; a missing or damaged state refuses every update); a power loss at any write (each step is
redone or undone at the next ``boot``: the running version is the old or the new one, never a mix);
a payload that is short, long or altered (size and digest before anything switches).
"""

import hashlib
import os

from ledgerlink.core import cbor
from ledgerlink.core.errors import LedgerlinkError
from ledgerlink.protocol import update_check as uc
from ledgerlink.protocol.codes import IMAGE_APP_LIBRARY, IMAGE_CONFIGURATION

STATE_FORMAT = 1
TRIAL_BOOTS_MAX = 1             # a new version that needs a second start before its check-in is rolled back
TRIAL_DEADLINE_MS = 300000      # default: 5 minutes from the start of the new version to its check-in
_ENOENT = 2
_READ_BLOCK = 1024

# entry keys of the state (docs/protocol.md, ``update-state``)
_SEQUENCE = 1
_DIGEST = 2
_VERSION = 3
_SLOT = 4
_PREVIOUS = 5
_BOOTS = 6
_OP = 7
_REFUSED = 8
OP_SWITCH = 1
OP_REVERT = 2


class Files:
    """File operations on the device's own filesystem. Every change goes through ``write``, ``write_at``,
    ``rename`` or ``remove`` (a test fails any one of them to simulate a power loss)."""

    def size(self, path):
        """The size of ``path``, or None when it does not exist."""
        try:
            return os.stat(path)[6]
        except OSError as exc:
            if exc.args[0] == _ENOENT:
                return None
            raise

    def read(self, path):
        """The bytes of ``path``, or None when it does not exist."""
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as exc:
            if exc.args[0] == _ENOENT:
                return None
            raise

    def write(self, path, data):
        with open(path, "wb") as f:
            f.write(data)

    def write_at(self, path, offset, data):
        with open(path, "r+b" if self.size(path) is not None else "wb") as f:
            f.seek(offset)
            f.write(data)

    def rename(self, src, dst):
        """Move ``src`` over ``dst`` (replacing it)."""
        try:
            os.rename(src, dst)
        except OSError:
            if self.size(dst) is None:
                raise
            os.remove(dst)              # a filesystem whose rename does not replace
            os.rename(src, dst)

    def remove(self, path):
        try:
            os.remove(path)
        except OSError as exc:
            if exc.args[0] != _ENOENT:
                raise

    def mkdir(self, path):
        if self.size(path) is None:
            os.mkdir(path)

    def digest(self, path, size):
        """(SHA-256 of the first ``size`` bytes of ``path``, bytes there are), reading a block at a time."""
        h = hashlib.sha256()
        seen = 0
        with open(path, "rb") as f:
            while True:
                block = f.read(_READ_BLOCK)
                if not block:
                    break
                if seen < size:
                    h.update(block[:size - seen])
                seen += len(block)
        return h.digest(), seen


class ConfigTarget:
    """A configuration file at ``path``: downloaded to ``path.new``, switched by renames, the old one kept as
    ``path.old`` until the check-in."""

    component = IMAGE_CONFIGURATION

    def __init__(self, files, path):
        self.files = files
        self.path = path
        self.new = path + ".new"
        self.old = path + ".old"

    def received(self, chunk_size):
        size = self.files.size(self.new)
        return 0 if size is None else size // chunk_size * chunk_size

    def write(self, offset, data):
        self.files.write_at(self.new, offset, data)

    def measure(self, size):
        return self.files.digest(self.new, size)

    def discard(self):
        self.files.remove(self.new)

    def prepare(self, entry):
        """Before the commit: no stale old copy may be taken for the running one's."""
        self.files.remove(self.old)
        return entry.get(_SLOT, 0)

    def switch(self, entry):
        if self.files.size(self.new) is not None:
            if self.files.size(self.path) is not None and self.files.size(self.old) is None:
                self.files.rename(self.path, self.old)
            self.files.rename(self.new, self.path)

    def revert(self, entry):
        if self.files.size(self.old) is not None:
            self.files.rename(self.old, self.path)
        elif entry.get(_DIGEST) is None:
            self.files.remove(self.path)        # there was no configuration before the update

    def confirm(self, entry):
        self.files.remove(self.old)


class AppTarget:
    """An app library in A/B slots ``prefix.0`` and ``prefix.1`` (a ROMFS image or an .mpy set): the new one
    goes to the slot not running; the state names the slot the board starts from (``update_boot``)."""

    component = IMAGE_APP_LIBRARY

    def __init__(self, files, prefix, unpack=None):
        self.files = files
        self.prefix = prefix
        self.unpack = unpack            # unpack(slot path), e.g. an .mpy set into its folder, before the commit
        self._slot = 0

    def slot_path(self, slot):
        return "%s.%d" % (self.prefix, slot)

    def set_running(self, entry):
        self._slot = entry.get(_SLOT, 0) if entry else 0

    def received(self, chunk_size):
        size = self.files.size(self.slot_path(1 - self._slot))
        return 0 if size is None else size // chunk_size * chunk_size

    def write(self, offset, data):
        self.files.write_at(self.slot_path(1 - self._slot), offset, data)

    def measure(self, size):
        return self.files.digest(self.slot_path(1 - self._slot), size)

    def discard(self):
        self.files.remove(self.slot_path(1 - self._slot))

    def prepare(self, entry):
        if self.unpack is not None:
            self.unpack(self.slot_path(1 - self._slot))
        return 1 - self._slot

    def switch(self, entry):
        self._slot = entry[_SLOT]

    def revert(self, entry):
        self._slot = entry[_SLOT]

    def confirm(self, entry):
        pass


def _digest_or_none(value):
    return value is None or (isinstance(value, bytes) and len(value) == 32)


def _entry_ok(component, entry):
    """Whether a state entry has exactly the shape ``update-state`` gives it."""
    if not cbor.is_uint(component) or not isinstance(entry, dict) or not cbor.is_uint(entry.get(_SEQUENCE)):
        return False
    for key, value in entry.items():
        if key in (_DIGEST, _REFUSED):
            ok = isinstance(value, bytes) and len(value) == 32
        elif key == _VERSION:
            ok = isinstance(value, str)
        elif key in (_SLOT, _BOOTS):
            ok = cbor.is_uint(value) and (key != _SLOT or value <= 1)
        elif key == _PREVIOUS:
            ok = (isinstance(value, list) and len(value) == 3 and _digest_or_none(value[0])
                  and (value[1] is None or isinstance(value[1], str)) and value[2] in (0, 1) and type(value[2]) is int)
        elif key == _OP:
            ok = value in (OP_SWITCH, OP_REVERT) and type(value) is int
        else:
            ok = key == _SEQUENCE
        if not ok:
            return False
    return True


def _minus(a, b):
    return a - b


def _running(entry):
    return None if entry is None else [entry.get(_DIGEST), entry.get(_VERSION), entry.get(_SLOT, 0)]


class UpdateAgent:
    """A device's updates, kept in the folder ``directory`` (state, pending offer) beside its targets."""

    def __init__(self, directory, device_class, chain_id, validator_keys, targets, files=None, backend=None,
                 trial_deadline_ms=TRIAL_DEADLINE_MS, fresh_heights=uc.FRESH_HEIGHTS, group_key=None, ticks_diff=None):
        self.files = files or Files()
        self.dir = directory
        self.device_class = device_class
        self.chain_id = chain_id
        self.validator_keys = [bytes(k) for k in validator_keys]
        self.group_key = group_key      # the set's FROST group key, when its headers name one
        self.targets = {}
        for target in targets:
            self.targets[target.component] = target
        self.backend = backend
        self.trial_deadline_ms = trial_deadline_ms
        self.state = None               # {component: entry} once read; None while unreadable
        self.state_error = None
        self._pending = None            # the update_manifest.Signed of the download under way (its offer is on flash)
        self._received = 0
        self._trial_start_ms = None
        self.ticks_diff = ticks_diff or _minus      # time.ticks_diff on a board: its ms counter wraps
        self.fresh_heights = fresh_heights
        self._newest_height = None      # the newest certified header verified (read from "seen" at first use)
        self._saved_height = 0

    # --- freshness ----------------------------------------------------------------------------------------

    def newest_height(self):
        """The height of the newest certified header this device verified (kept across resets)."""
        if self._newest_height is None:
            height = 0
            try:
                raw = self.files.read(self._path("seen"))
                height = cbor.loads(raw) if raw is not None else 0
            except (LedgerlinkError, TypeError, OSError):
                pass                    # unreadable: as before any header was seen
            self._newest_height = self._saved_height = height if cbor.is_uint(height) else 0
        return self._newest_height

    def saw_header(self, height):
        """Note a certified header this device verified (a receipt's, an offer's). Offers whose proofs lie
        more than ``fresh_heights`` below the newest are refused. Saved each ``fresh_heights // 4`` blocks,
        so a reset forgets at most that many (flash is not written for each receipt)."""
        if not cbor.is_uint(height) or height <= self.newest_height():
            return
        self._newest_height = height
        if height >= self._saved_height + max(1, self.fresh_heights // 4) and self.files.size(self.dir) is not None:
            self.files.write(self._path("seen.new"), cbor.dumps(height))
            self.files.rename(self._path("seen.new"), self._path("seen"))
            self._saved_height = height

    # --- state ------------------------------------------------------------------------------------------

    def _path(self, name):
        return self.dir + "/" + name

    def provision(self):
        """Make the folder and the empty state of a new device (no update accepted yet). Where the folder
        exists, nothing is made: a state lost from it is not remade, so every update is refused (fail closed)."""
        if self.files.size(self.dir) is None:
            made = self.dir + ".new"                 # made whole, then renamed: a reset in between makes it again
            self.files.mkdir(made)
            self.files.write(made + "/state", cbor.dumps([STATE_FORMAT, {}]))
            self.files.rename(made, self.dir)

    def _decode_state(self, raw):
        obj = cbor.loads(raw, max_depth=6)
        if not isinstance(obj, list) or len(obj) != 2 or obj[0] != STATE_FORMAT or not isinstance(obj[1], dict):
            raise uc.UpdateRefused(uc.UPDATE_STATE_UNREADABLE, "update state has the wrong shape")
        for component, entry in obj[1].items():
            if not _entry_ok(component, entry):
                raise uc.UpdateRefused(uc.UPDATE_STATE_UNREADABLE, "update state entry %r is damaged" % (component,))
        return obj[1]

    def _load(self):
        state_path, new_path = self._path("state"), self._path("state.new")
        raw = self.files.read(state_path)
        if raw is None:
            raw = self.files.read(new_path)
            if raw is None:
                raise uc.UpdateRefused(uc.UPDATE_STATE_UNREADABLE, "no update state (never provisioned, or lost)")
            state = self._decode_state(raw)         # a replacing rename cut short: state.new is complete
            self.files.rename(new_path, state_path)
            return state
        state = self._decode_state(raw)
        if self.files.size(new_path) is not None:
            self.files.remove(new_path)             # a write cut short before its rename
        return state

    def _save(self, state):
        self.files.write(self._path("state.new"), cbor.dumps([STATE_FORMAT, state]))
        self.files.rename(self._path("state.new"), self._path("state"))
        self.state = state

    def _state(self):
        if self.state is None:
            try:
                self.state = self._load()
                self.state_error = None
            except (LedgerlinkError, TypeError) as exc:
                self.state_error = exc
                code = exc.code if isinstance(exc, uc.UpdateRefused) else uc.UPDATE_STATE_UNREADABLE
                raise uc.UpdateRefused(code, "update state unreadable: %s" % exc)
        return self.state

    def running(self):
        """{component: {"sequence", "digest", "version", "trial"}} of what runs (empty while unreadable)."""
        try:
            state = self._state()
        except uc.UpdateRefused:
            return {}
        return {c: {"sequence": e[_SEQUENCE], "digest": e.get(_DIGEST), "version": e.get(_VERSION),
                    "trial": _PREVIOUS in e} for c, e in state.items()}

    # --- start, check-in, rollback ------------------------------------------------------------------------

    def boot(self, now_ms=0, resume=True):
        """At each start: finish a switch or rollback cut short, count the start of a version on trial and
        roll back one started twice without a check-in; resume a pending download (unless not ``resume``:
        the caller then calls ``resume``). Returns the running()."""
        try:
            state = self._state()
        except uc.UpdateRefused:
            return {}
        for component in list(state):
            target = self.targets.get(component)
            if target is None:
                continue
            entry = self.state[component]
            if hasattr(target, "set_running"):
                target.set_running(entry)
            op = entry.get(_OP)
            if op is not None:
                (target.switch if op == OP_SWITCH else target.revert)(entry)
                entry = self._put(component, entry, _OP, None)
            if _PREVIOUS in entry:
                if entry.get(_BOOTS, 0) >= TRIAL_BOOTS_MAX:
                    self._rollback(component)
                else:
                    self._put(component, entry, _BOOTS, entry.get(_BOOTS, 0) + 1)
        self._trial_start_ms = now_ms
        if resume:
            self.resume()
        return self.running()

    def _put(self, component, entry, key, value):
        """Save the state with ``key`` of the component's entry set to ``value`` (removed for None)."""
        entry = dict(entry)
        if value is None:
            entry.pop(key, None)
        else:
            entry[key] = value
        state = dict(self.state)
        state[component] = entry
        self._save(state)
        return entry

    def checked_in(self):
        """The device checked in (its status got a valid receipt): keep every version on trial."""
        for component in list(self._state()):
            entry = self.state[component]
            if _PREVIOUS in entry:
                kept = dict(entry)
                del kept[_PREVIOUS]
                kept.pop(_BOOTS, None)
                self._put(component, kept, _PREVIOUS, None)
                self.targets[component].confirm(entry)

    def tick(self, now_ms):
        """Roll back the versions on trial when their check-in is overdue; the components rolled back."""
        if self._trial_start_ms is None or self.ticks_diff(now_ms, self._trial_start_ms) < self.trial_deadline_ms:
            return []
        try:
            state = self._state()
        except uc.UpdateRefused:
            return []
        done = [c for c, e in state.items() if _PREVIOUS in e]
        for component in done:
            self._rollback(component)
        return done

    def _rollback(self, component):
        entry = dict(self.state[component])
        failed = entry.get(_DIGEST)
        digest, version, slot = entry.pop(_PREVIOUS)
        entry.pop(_BOOTS, None)
        entry[_DIGEST], entry[_VERSION], entry[_SLOT], entry[_OP], entry[_REFUSED] = (
            digest, version, slot, OP_REVERT, failed)
        if digest is None:
            del entry[_DIGEST]
        if version is None:
            del entry[_VERSION]
        state = dict(self.state)
        state[component] = entry
        self._save(state)                   # the commit point: from here the old version runs
        self.targets[component].revert(entry)
        self._put(component, entry, _OP, None)

    # --- offer, download, install ------------------------------------------------------------------------

    def offer(self, data, stored=False, checked=None):
        """Check an offer; the Manifest of a download now under way (resumed when it is the same one).
        UpdateRefused otherwise, with nothing stored. ``stored``: the offer is the one kept at the start.
        ``checked``: the outcome of ``update_check.check_offer`` for ``data`` with this agent's parameters
        (``check_offer`` below), the Signed it returned or the UpdateRefused it raised, when the caller made
        it already (a board checks an offer before it loads this module)."""
        if checked is None:
            signed = self.check_offer(data)
        elif isinstance(checked, uc.UpdateRefused):
            raise checked
        else:
            signed = checked
        self._check_state(signed)
        self.saw_header(signed.proof_height)
        if self._pending is not None and self._pending.digest == signed.digest:
            return signed.manifest
        if self._pending is not None:
            self._drop_pending()
        target = self.targets[signed.manifest.component]
        if hasattr(target, "set_running"):
            target.set_running(self._state().get(signed.manifest.component))
        if not stored:
            target.discard()                # what an earlier download left is not this payload's beginning
            self.files.mkdir(self.dir)
            self.files.write(self._path("offer.new"), data)
            self.files.rename(self._path("offer.new"), self._path("offer"))
        self._pending = signed
        self._received = target.received(signed.manifest.chunk_size)
        return signed.manifest

    def check_offer(self, data):
        """``update_check.check_offer`` of ``data`` with this agent's chain, validators, class, backend and
        freshness."""
        return uc.check_offer(data, self.chain_id, self.validator_keys, self.device_class, self.backend,
                              self.newest_height(), self.fresh_heights, self.group_key)

    def _check_state(self, signed):
        m = signed.manifest
        target = self.targets.get(m.component)
        if target is None:
            raise uc.UpdateRefused(uc.UPDATE_UNSUPPORTED, "this device does not install component %d" % m.component)
        state = self._state()
        entry = state.get(m.component)
        accepted = 0 if entry is None else entry[_SEQUENCE]
        if m.sequence <= accepted:
            raise uc.UpdateRefused(uc.UPDATE_STALE_SEQUENCE, "sequence %d is not above the accepted %d"
                                   % (m.sequence, accepted))
        if entry is not None and _PREVIOUS in entry:
            raise uc.UpdateRefused(uc.UPDATE_BUSY, "the last update of component %d awaits its check-in"
                                   % m.component)
        installed = [e.get(_DIGEST) for e in state.values()]
        for dep in m.dependencies:
            if dep not in installed:
                raise uc.UpdateRefused(uc.UPDATE_DEPENDENCY, "dependency %s is not installed" % dep.hex())

    def resume(self, checked=None):
        """Take up the download whose offer a reset left stored, checked again (``checked``: as in ``offer``);
        a stored offer that no longer passes is dropped with what it downloaded."""
        raw = self.files.read(self._path("offer"))
        if raw is None:
            return
        try:
            self.offer(raw, stored=True, checked=checked)
        except uc.UpdateRefused:
            self._pending = None
            self._drop_pending()

    def _drop_pending(self):
        if self._pending is not None:
            self.targets[self._pending.manifest.component].discard()
        self.files.remove(self._path("offer"))
        self._pending = None
        self._received = 0

    @property
    def pending_digest(self):
        """The manifest digest of the download under way, or None."""
        return None if self._pending is None else self._pending.digest

    @property
    def pending(self):
        """The Manifest of the download under way, or None."""
        return None if self._pending is None else self._pending.manifest

    def next_chunk(self):
        """Index of the chunk to ask for next, or None when there is no download or every chunk is in."""
        m = self.pending
        if m is None or self._received >= m.size:
            return None
        return self._received // m.chunk_size

    def chunk(self, index, data):
        """Write chunk ``index`` (out-of-order chunks are ignored: False). A chunk longer than the manifest
        allows, or a short one before the last, refuses the update (UPDATE_SIZE)."""
        m = self.pending
        if m is None or index != self.next_chunk():
            return False
        offset = index * m.chunk_size
        expected = min(m.chunk_size, m.size - offset)
        if len(data) != expected:
            self._drop_pending()
            raise uc.UpdateRefused(uc.UPDATE_SIZE, "chunk %d has %d bytes, %d expected" % (index, len(data), expected))
        self.targets[m.component].write(offset, data)
        self._received = offset + expected
        return True

    def finish(self, now_ms=None):
        """Check the payload's size and digest and install it; the component's running() entry. ``now_ms``
        starts the check-in deadline of a version that runs without a restart (a configuration).
        UpdateRefused (and the download dropped) when a check or a write fails; the running version stays."""
        signed = self._pending
        m = signed.manifest
        target = self.targets[m.component]
        try:
            self._check_state(signed)
            digest, size = target.measure(m.size)
            if size != m.size:
                raise uc.UpdateRefused(uc.UPDATE_SIZE, "payload has %d bytes, the manifest says %d" % (size, m.size))
            if digest != m.digest:
                raise uc.UpdateRefused(uc.UPDATE_DIGEST, "payload digest does not match the manifest's")
            state = dict(self._state())
            old = state.get(m.component)
            slot = target.prepare(old or {})
        except uc.UpdateRefused:
            self._drop_pending()
            raise
        except OSError as exc:
            self._drop_pending()
            raise uc.UpdateRefused(uc.UPDATE_WRITE_FAILED, "reading or preparing the payload failed: %s" % exc)
        entry = {_SEQUENCE: m.sequence, _DIGEST: signed.digest, _SLOT: slot, _PREVIOUS: _running(old) or
                 [None, None, 0], _BOOTS: 0, _OP: OP_SWITCH}
        if m.version is not None:
            entry[_VERSION] = m.version
        state[m.component] = entry
        self._save(state)                   # the commit point: the sequence is accepted, the switch is due
        target.switch(entry)
        self._put(m.component, entry, _OP, None)
        self.files.remove(self._path("offer"))
        self._pending = None
        self._received = 0
        if now_ms is not None:
            self._trial_start_ms = now_ms
        return self.running()[m.component]
