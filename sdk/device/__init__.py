"""CPython device SDK: sans-I/O device core, file keystore, durable offline queue and MQTT client.

``DeviceCore`` (core.py) holds the protocol; ``FileKeystore``/``FileCounter`` (keystore.py) the key and
sequence mark; ``OfflineQueue`` (offline_queue.py) the frames waiting for the broker; ``Device``
(client.py) runs it all over MQTT 5. ``client`` is imported on use so the core works without paho.
"""

from ledgerlink.device.core import (MODE_SESSION, MODE_SIGNED, CommandResult, DeviceCore, DeviceError, MemoryCounter,
                                    ReceiptResult, SequenceCounter, SessionOpened)
from ledgerlink.device.keystore import FileCounter, FileKeystore, FileRecord, KeystoreError
from ledgerlink.device.offline_queue import OfflineQueue

__all__ = ["DeviceCore", "DeviceError", "SequenceCounter", "MemoryCounter", "ReceiptResult", "SessionOpened",
           "CommandResult", "MODE_SIGNED", "MODE_SESSION", "FileKeystore", "FileCounter", "FileRecord", "KeystoreError",
           "OfflineQueue"]
