"""CPython device SDK: sans-I/O device core, file keystore, offline queue and MQTT client."""
