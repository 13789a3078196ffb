"""The IDX reader on well-formed and malformed files."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from datacache import idx_bytes

from fsnn.platform.data import DataError, parse_idx, read_idx


def test_reads_ubyte_images(tmp_path: Path) -> None:
    pixels = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "images-idx3-ubyte"
    path.write_bytes(idx_bytes(0x08, (2, 3, 4), pixels.tobytes()))
    got = read_idx(path)
    assert got.dtype == np.uint8 and got.shape == (2, 3, 4)
    np.testing.assert_array_equal(got, pixels)
    got[0, 0, 0] = 1  # a writable copy, not a view of the file buffer


def test_reads_big_endian_int32_and_float64() -> None:
    ints = np.array([[1, -2], [300000, 7]], dtype=">i4")
    got = parse_idx(idx_bytes(0x0C, (2, 2), ints.tobytes()))
    assert got.dtype == np.dtype("int32") and got.dtype.isnative
    assert got.tolist() == [[1, -2], [300000, 7]]
    doubles = np.array([0.5, -1.25, 3.0], dtype=">f8")
    assert parse_idx(idx_bytes(0x0E, (3,), doubles.tobytes())).tolist() == [0.5, -1.25, 3.0]


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "bad magic"),
        (b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00", "bad magic"),
        (b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00", "unknown IDX type code 0x07"),
        (b"\x00\x00\x08\x03" + struct.pack(">I", 1), "truncated IDX header"),
        (b"\x00\x00\x08\x00", "truncated IDX header"),
        (idx_bytes(0x08, (2, 2), bytes(3)), "should be 16 bytes .* is 15"),
        (idx_bytes(0x08, (2, 2), bytes(5)), "should be 16 bytes .* is 17"),
        (idx_bytes(0x0B, (2,), bytes(2)), "should be 12 bytes"),
    ],
)
def test_malformed_files_raise_data_error(tmp_path: Path, blob: bytes, message: str) -> None:
    path = tmp_path / "bad-idx"
    path.write_bytes(blob)
    with pytest.raises(DataError, match=message) as err:
        read_idx(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read IDX file"):
        read_idx(tmp_path / "absent")
