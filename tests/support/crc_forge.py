"""Forging a CRC, as anyone can: other bytes of the same length and the same CRC32/CRC32C.

A CRC is affine over GF(2): for messages of one length, crc(x ^ e) ^ crc(x) depends on ``e`` only, and
linearly. Changing 4 bytes at one place moves the CRC through all 2**32 values, so after changing any
bytes (the attacker's content), 4 bytes elsewhere can be solved for that restore the original CRC.
"""

from __future__ import annotations

import base64

from airflow_mpu_provider.multipart.checksums.digests import checksum_b64


def crc(algorithm: str, data: bytes) -> int:
    return int.from_bytes(base64.b64decode(checksum_b64(algorithm, data)), "big")


def forge_same_crc(data: bytes, algorithm: str = "CRC32", *, change_at: int = 0, fix_at: int | None = None) -> bytes:
    """``data`` with the byte at ``change_at`` changed and 4 bytes at ``fix_at`` (default: the last 4)
    solved so that the ``algorithm`` (CRC32 or CRC32C) checksum is the original's."""
    fix_at = len(data) - 4 if fix_at is None else fix_at
    assert len(data) >= 5 and not fix_at <= change_at < fix_at + 4
    target = crc(algorithm, data)
    forged = bytearray(data)
    forged[change_at] ^= 0xFF
    base = crc(algorithm, bytes(forged))
    # The CRC change each of the 32 bits at fix_at causes (columns of a 32x32 matrix over GF(2)).
    columns = []
    for bit in range(32):
        flipped = bytearray(forged)
        flipped[fix_at + bit // 8] ^= 1 << (bit % 8)
        columns.append(crc(algorithm, bytes(flipped)) ^ base)
    flips = _solve(columns, target ^ base)
    for bit in range(32):
        if flips >> bit & 1:
            forged[fix_at + bit // 8] ^= 1 << (bit % 8)
    result = bytes(forged)
    assert result != data and crc(algorithm, result) == target
    return result


def _solve(columns: list[int], want: int) -> int:
    """The set of columns (as a bit mask) whose XOR is ``want`` (Gaussian elimination over GF(2))."""
    rows: list[tuple[int, int]] = []  # (vector, the columns that make it), reduced, one per leading bit
    for index, column in enumerate(columns):
        vector, made_of = column, 1 << index
        for pivot, pivot_made_of in rows:
            if vector ^ pivot < vector:
                vector, made_of = vector ^ pivot, made_of ^ pivot_made_of
        if vector:
            rows.append((vector, made_of))
            rows.sort(reverse=True)
    mask = 0
    for pivot, pivot_made_of in rows:
        if want ^ pivot < want:
            want, mask = want ^ pivot, mask ^ pivot_made_of
    assert want == 0, "the 4 bytes cannot reach this CRC"
    return mask
