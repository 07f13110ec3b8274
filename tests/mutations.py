"""Hypothesis helpers for the fast-path tests: mutated encodings and over-long CBOR heads."""

from __future__ import annotations

from hypothesis import strategies as st


def mutated(data: st.DataObject, frame: bytes) -> bytes:
    """``frame`` as it is, bit-flipped, truncated, extended, or with one byte replaced."""
    how = data.draw(st.sampled_from(["same", "flip", "cut", "extend", "byte"]))
    if how == "same" or not frame:
        return frame
    pos = data.draw(st.integers(0, len(frame) - 1))
    if how == "flip":
        return frame[:pos] + bytes((frame[pos] ^ (1 << data.draw(st.integers(0, 7))),)) + frame[pos + 1:]
    if how == "cut":
        return frame[:pos]
    if how == "extend":
        return frame + data.draw(st.binary(min_size=1, max_size=3))
    return frame[:pos] + bytes((data.draw(st.integers(0, 255)),)) + frame[pos + 1:]


def long_head(major: int, n: int) -> bytes:
    """A head of ``n`` that is longer than needed (not deterministic)."""
    return bytes(((major << 5) | 25,)) + n.to_bytes(2, "big")
