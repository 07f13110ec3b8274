"""Benchmark of the gateway store alone: ``python3 -m ledgerlink.gateway.store_bench``.

Writes ``--messages`` accepted frames of ``--devices`` devices into a new store in a temporary directory,
in groups of ``--group`` (one ``write_many`` each, as the gateway's commit thread does) with a batch of
``--batch`` made every ``--batch`` messages (``create_batch``, as the batcher does), and prints a line
every ``--every`` messages: time per message of the group commits (wall and CPU) and of the batches, the
longest ``create_batch``, and the bytes the process wrote to disk per message (Linux ``/proc/self/io``;
"-" elsewhere). Frames are random bytes of ``--frame-bytes``; no check or network is involved.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import tempfile
import time
from pathlib import Path

from ledgerlink.gateway.store import Store


def bytes_written() -> int | None:
    """Bytes this process caused to be written to storage so far (Linux), else None."""
    try:
        with open("/proc/self/io") as f:
            fields = dict(line.split(": ") for line in f.read().splitlines())
        return int(fields["write_bytes"])
    except (OSError, KeyError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m ledgerlink.gateway.store_bench", description=__doc__.split("\n")[0])
    p.add_argument("--messages", type=int, default=120_000)
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--group", type=int, default=256, help="frames per write_many (the gateway's MAX_GROUP)")
    p.add_argument("--batch", type=int, default=1024, help="messages per create_batch")
    p.add_argument("--every", type=int, default=20_000, help="print a line every this many messages")
    p.add_argument("--frame-bytes", type=int, default=180)
    args = p.parse_args(argv)
    rnd = random.Random(1)
    devices = [rnd.randbytes(16) for _ in range(args.devices)]
    seqs = [0] * args.devices
    print("%10s  %16s  %16s  %14s  %16s" % ("messages", "commit us/msg", "commit CPU us", "batch us/msg",
                                             "longest batch"), "  disk B/msg")
    with tempfile.TemporaryDirectory(prefix="ll-store-bench-") as d:
        store = Store(Path(d) / "gateway.db", owner="bench")
        wall = cpu = batch = longest = 0.0
        counted = 0
        written = bytes_written()
        total = 0
        while total < args.messages:
            rows = []
            for _ in range(min(args.group, args.messages - total)):
                i = rnd.randrange(args.devices)
                seqs[i] += 1
                frame = rnd.randbytes(args.frame_bytes)
                rows.append((frame, devices[i], seqs[i], 0, "ll/bench/dev/%s/up" % devices[i].hex(), 0,
                             hashlib.sha256(frame).digest()))
            t, c = time.perf_counter(), time.thread_time()
            store.write_many(rows)
            wall += time.perf_counter() - t
            cpu += time.thread_time() - c
            total += len(rows)
            counted += len(rows)
            waiting = store.unbatched_leaves(args.batch)
            if len(waiting) >= args.batch:
                t = time.perf_counter()
                store.create_batch(rnd.randbytes(16), bytes(32), b"tx", [m[0] for m in waiting], 0)
                took = time.perf_counter() - t
                batch += took
                longest = max(longest, took)
            if total % args.every < args.group or total == args.messages:
                now = bytes_written()
                disk = "%11.0f" % ((now - written) / counted) if now is not None and written is not None else "%11s" % "-"
                print("%10d  %16.1f  %16.1f  %14.1f  %13.1f ms" % (total, wall / counted * 1e6, cpu / counted * 1e6,
                                                                  batch / counted * 1e6, longest * 1e3), disk,
                      flush=True)
                wall = cpu = batch = longest = 0.0
                counted = 0
                written = now
        store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
