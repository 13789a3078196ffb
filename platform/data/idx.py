"""A small reader for the IDX format of MNIST-style data sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import DataError

# IDX type codes (third magic byte) -> big-endian numpy dtype.
_IDX_DTYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode an IDX blob: magic 00 00 <type> <ndim>, ndim big-endian uint32 dims, then data."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{source} is not an IDX file (bad magic); delete it and re-run")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise DataError(f"{source} has unknown IDX type code 0x{code:02x}; delete it and re-run")
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DataError(f"{source} has a truncated IDX header; delete it and re-run")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise DataError(
            f"{source} should be {expected} bytes for IDX dims {dims} but is {len(data)}; "
            "delete it and re-run"
        )
    return (
        np.frombuffer(data, dtype=dtype, offset=header)
        .reshape(dims)
        .astype(dtype.newbyteorder("="))
    )


def read_idx(path: Path | str) -> np.ndarray:
    """Read an IDX file into a native-endian numpy array; DataError if it is malformed."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read IDX file {path}: {exc.strerror or exc}") from None
    return parse_idx(data, str(path))
