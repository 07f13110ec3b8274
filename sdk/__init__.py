"""ledgerlink: device-security SDK (portable core in ledgerlink.core)."""

__version__ = "0.1.0"
