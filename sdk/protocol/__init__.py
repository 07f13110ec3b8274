"""What devices, gateways and ledger nodes share on the wire: message formats, codes and their checks.

Portable like ``ledgerlink.core`` (CPython 3.11 and MicroPython >= 1.22), and built on it; nothing here
imports the device SDK, the gateway or the ledger.
"""
