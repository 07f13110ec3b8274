"""Portable protocol core: runs unchanged on CPython 3.11 and MicroPython >= 1.22.

Only the subset of Python both implementations share is used here: no typing,
no dataclasses, no int.bit_length, byte order passed positionally.
"""
