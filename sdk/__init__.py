"""ledgerlink: device-security SDK (portable core in ledgerlink.core).

On CPython, importing the package registers the accelerated crypto backends and CBOR codec with the
core (``ledgerlink.cpython_backend``, ``ledgerlink.cpython_cbor``); on MicroPython it imports nothing.
"""

import sys

__version__ = "0.1.0"

if sys.implementation.name == "cpython":
    from ledgerlink import cpython_backend  # noqa: F401  (registers "cpython", preferred, and "pycryptodome")
    try:
        from ledgerlink import cpython_cbor  # noqa: F401  (registers itself once its self-check passes)
    except ImportError:                      # cbor2 missing: the portable codec stays in use
        pass
