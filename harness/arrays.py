"""Nested structures of arrays <-> `.npz` files: how arrays cross the process boundary.

Arrays never travel pickled. A structure (array, tuple, list or dict, nested) is written as
one `.npz` holding the leaves under keys "0", "1", ..., plus a small JSON description of the
nesting stored beside them under the key "__structure__".
"""

from __future__ import annotations

import io
import json
import mmap
import struct
import zipfile
from typing import Any

import numpy as np

STRUCTURE_KEY = "__structure__"


def flatten(value: Any) -> tuple[Any, list[np.ndarray]]:
    """Split a nested structure into a JSON-able skeleton and its list of leaves."""
    leaves: list[np.ndarray] = []

    def walk(v):
        if isinstance(v, dict):  # sorted, as keras.tree does: backends return dicts in different orders
            return {"dict": [[str(k), walk(v[k])] for k in sorted(v, key=str)]}
        if isinstance(v, (list, tuple)):
            return {"tuple" if isinstance(v, tuple) else "list": [walk(x) for x in v]}
        if v is None:
            return {"none": None}
        leaves.append(np.asarray(v))
        return {"leaf": len(leaves) - 1}

    return walk(value), leaves


def unflatten(skeleton: Any, leaves: list[Any]) -> Any:
    kind, body = next(iter(skeleton.items()))
    if kind == "leaf":
        return leaves[body]
    if kind == "none":
        return None
    if kind == "dict":
        return {k: unflatten(x, leaves) for k, x in body}
    items = [unflatten(x, leaves) for x in body]
    return tuple(items) if kind == "tuple" else items


def leaf_names(skeleton: Any, prefix: str = "") -> list[str]:
    """Readable names for the leaves, in order: `output`, `output[0]`, `output['a']`..."""
    kind, body = next(iter(skeleton.items()))
    if kind == "leaf":
        return [prefix or "output"]
    if kind == "none":
        return []
    if kind == "dict":
        return [n for k, x in body for n in leaf_names(x, f"{prefix or 'output'}[{k!r}]")]
    return [n for i, x in enumerate(body) for n in leaf_names(x, f"{prefix or 'output'}[{i}]")]


def portable(leaf: np.ndarray) -> np.ndarray:
    """bfloat16 and other ml_dtypes types are not plain numpy: they travel as float32."""
    return leaf.astype(np.float32) if leaf.dtype.kind == "V" else leaf


def save_tree(path: str, value: Any) -> list[str]:
    """Write a structure of arrays; returns the leaves' original dtype names."""
    skeleton, leaves = flatten(value)
    dtypes = [str(leaf.dtype) for leaf in leaves]
    leaves = [portable(leaf) for leaf in leaves]
    np.savez(path, **{str(i): leaf for i, leaf in enumerate(leaves)},
             **{STRUCTURE_KEY: np.frombuffer(json.dumps(skeleton).encode(), dtype=np.uint8)})
    return dtypes


def load_tree(path: str) -> Any:
    skeleton, leaves = load_leaves(path)
    return unflatten(skeleton, leaves)


def load_leaves(path: str) -> tuple[Any, list[np.ndarray]]:
    # Copies: inputs go to user code and compilers (torch.compile refuses arrays whose base
    # is a memory map), and these files are small.
    data = read_npz(path)
    skeleton = json.loads(data.pop(STRUCTURE_KEY).tobytes().decode())
    return skeleton, [np.array(data[str(i)]) for i in range(len(data))]


def read_npz(path: str) -> dict[str, np.ndarray]:
    """Read an uncompressed `.npz` (as `np.savez` writes it) without copying: each array is a
    read-only view of the memory-mapped file. `np.load` would check each member's CRC and copy
    it, which halves the rate at which weights reach a worker (see benchmarks/run.py)."""
    with open(path, "rb") as f, zipfile.ZipFile(f) as archive:
        members = archive.infolist()
        if any(m.compress_type != zipfile.ZIP_STORED for m in members):
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    result = {}
    for member in members:
        # A zip member's data follows its 30-byte local header, name and extra field.
        name_len, extra_len = struct.unpack("<HH", mapped[member.header_offset + 26:member.header_offset + 30])
        start = member.header_offset + 30 + name_len + extra_len
        header = io.BytesIO(mapped[start:start + 65536])
        version = np.lib.format.read_magic(header)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran_order, dtype = read_header(header)
        if dtype.hasobject:
            raise ValueError(f"{path}: {member.filename} holds Python objects; arrays only")
        array = np.frombuffer(mapped, dtype=dtype, count=int(np.prod(shape)), offset=start + header.tell())
        result[member.filename.removesuffix(".npy")] = array.reshape(shape, order="F" if fortran_order else "C")
    return result


def save_weights(path: str, weights: dict[str, np.ndarray]) -> None:
    """Weights keyed by variable path (`sequential/dense/kernel`)."""
    np.savez(path, **{k: portable(np.asarray(v)) for k, v in weights.items()})


def load_weights(path: str) -> dict[str, np.ndarray]:
    return read_npz(path)
