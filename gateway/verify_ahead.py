"""Signature checks of a group of frames run ahead on several threads, then answered to the checks.

`cryptography` releases the GIL while OpenSSL verifies an ECDSA signature, so a gateway process can
verify on more than one core, but only while no other thread keeps the GIL busy: a thread that comes
back from OpenSSL waits for the GIL as long as the switch interval (5 ms) whenever the check thread is
running Python. So the check thread asks for the group's signatures first (``prime``) and waits, idle,
while ``threads`` worker threads verify them; then it runs the ordinary, sequential checks, whose
``verify`` calls are answered from those results.

``VerifyAhead`` stands in for the backend (every other method is the backend's). ``verify(pub, msg,
sig)`` answers from a result only when that exact (key, message, signature) was checked ahead, and
otherwise verifies as the backend does, so the checks decide exactly what they would decide without it;
tests/gateway/test_verify_ahead.py holds it to that on accepted, altered, re-keyed and unprimed frames.
Results live until the next ``prime`` (one group).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

Check = tuple[bytes, bytes, bytes]          # (SEC 1 public key, signed bytes, 64-byte r || s)


class VerifyAhead:
    def __init__(self, backend: Any, threads: int) -> None:
        if threads < 1:
            raise ValueError("threads must be at least 1")
        self.backend = backend
        self.threads = threads
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="ll-gw-verify") if threads > 1 else None
        self.results: dict[tuple[bytes, bytes], tuple[bytes, bool]] = {}
        self.primed = 0                     # signatures checked ahead, in all
        self.answered = 0                   # verify calls answered from those results

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.backend, name)
        setattr(self, name, value)              # found in the instance from now on
        return value

    def verify(self, pub: bytes, msg: bytes, sig: bytes) -> bool:
        hit = self.results.pop((pub, sig), None)
        if hit is not None and hit[0] == msg:
            self.answered += 1
            return hit[1]
        return self.backend.verify(pub, msg, sig)

    def _verify_all(self, checks: Sequence[Check]) -> list[bool]:
        verify = self.backend.verify
        return [verify(pub, msg, sig) for pub, msg, sig in checks]

    def prime(self, checks: Sequence[Check]) -> None:
        """Verify ``checks`` (split over the threads) and keep the results for the next ``verify`` calls."""
        self.results.clear()
        if not checks:
            return
        if self.pool is None or len(checks) < 2 * self.threads:
            parts = [checks]
            answers = [self._verify_all(checks)]
        else:
            parts = [checks[i::self.threads] for i in range(self.threads)]
            answers = list(self.pool.map(self._verify_all, parts))
        results = self.results
        for part, oks in zip(parts, answers):
            for (pub, msg, sig), ok in zip(part, oks):
                results[(pub, sig)] = (msg, ok)
        self.primed += len(checks)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
