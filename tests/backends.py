"""A crypto backend for tests that counts its signature checks."""

from __future__ import annotations

from typing import Any

from ledgerlink.core.backend import get_backend


class CountingBackend:
    """``inner`` (the CPython backend by default), with its ``verify`` calls counted in ``verifies``."""

    def __init__(self, inner: Any = None) -> None:
        self.inner = inner if inner is not None else get_backend("cpython")
        self.verifies = 0

    def verify(self, pub: bytes, msg: bytes, sig: bytes) -> bool:
        self.verifies += 1
        return self.inner.verify(pub, msg, sig)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
