"""Arrow arrays from NumPy buffers and Python strings, without `pa.array`.

`pyarrow.array` imports pandas (about 0.4 s) the first time it runs when pandas is installed, in every process:
the parent and each worker. Building arrays from their buffers gives the same arrays, zero-copy, and keeps
`lossmask prepare` from paying for a library it never uses.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def numeric(values: np.ndarray, type_: pa.DataType) -> pa.Array:
    """A primitive array of `type_` over the bytes of `values` (cast to its NumPy dtype first when needed)."""
    data = np.ascontiguousarray(values, dtype=np.dtype(str(type_)))
    return pa.Array.from_buffers(type_, len(data), [None, pa.py_buffer(data)])


def strings(values: list[str]) -> pa.Array:
    """A string array of `values`."""
    encoded = [v.encode("utf-8") for v in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return pa.Array.from_buffers(
        pa.string(), len(encoded), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))]
    )


def lists(offsets: np.ndarray, values: pa.Array) -> pa.ListArray:
    """A list array whose row k is `values[offsets[k]:offsets[k + 1]]`."""
    return pa.ListArray.from_arrays(numeric(offsets, pa.int32()), values)


def column(values: list, type_: pa.DataType) -> pa.Array:
    """One value per row, typed as a schema column (strings or a primitive type)."""
    if pa.types.is_string(type_):
        return strings(values)
    return numeric(np.asarray(values), type_)


def values(array: pa.Array) -> np.ndarray:
    """A primitive array without nulls as a zero-copy NumPy view (`Array.to_numpy` would import pandas)."""
    dtype = np.dtype(str(array.type))
    data = array.buffers()[1]
    if len(array) == 0 or data is None:
        return np.zeros(0, dtype=dtype)
    return np.frombuffer(data, dtype=dtype, count=len(array), offset=array.offset * dtype.itemsize)


def utf8_lengths(array: pa.Array) -> np.ndarray:
    """The UTF-8 byte length of each string of a string array without nulls, from its offsets buffer."""
    if len(array) == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32, count=len(array) + 1, offset=array.offset * 4)
    return np.diff(offsets).astype(np.int64)
