"""Which ids of a column are among a set of ids, and where in it, hashed by Arrow.

pandas 3's `Series.isin` on a `str` column first turns every id of the set into a pyarrow scalar, one Python
call each: 0.6 s against the 100,000 item ids of the L shop, paid once per batch by publish_shard's check and
once per model by evaluate's warm users. Arrow's `is_in` hashes the same set in C (40 ms here).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from numba import njit


def is_in(values: Iterable, ids: Iterable) -> np.ndarray:
    """A bool per value of `values` (a Series, Index, array or list): whether it is one of `ids`. A missing value
    is in `ids` only when `ids` holds one, as with pandas' `isin`. Strings go through Arrow; anything else (an
    id column of numbers in a raw file, mixed types) through pandas, with pandas' answer."""
    arrays = _string_arrays(values, ids)
    if arrays is None:
        return pd.Index(_objects(values)).isin(_objects(ids))
    array, value_set = arrays
    if len(value_set) == 0:
        return np.zeros(len(array), dtype=bool)
    return pc.is_in(array, value_set=value_set).to_numpy(zero_copy_only=False)


def positions(values: Iterable, ids: Iterable) -> np.ndarray:
    """Each value's position (int64) in `ids`, which are distinct, or -1 where it is not one of them: pandas'
    `Index(ids).get_indexer(values)`, hashed by Arrow for strings (0.26 s -> 0.03 s for 400,000 user ids
    against 40,000), through pandas otherwise."""
    arrays = _string_arrays(values, ids)
    if arrays is None:
        return pd.Index(_objects(ids)).get_indexer(_objects(values)).astype(np.int64)
    array, value_set = arrays
    if len(value_set) == 0:
        return np.full(len(array), -1, np.int64)
    return pc.index_in(array, value_set=value_set).fill_null(-1).to_numpy().astype(np.int64)


def _string_arrays(values: Iterable, ids: Iterable) -> tuple[pa.Array, pa.Array] | None:
    """`values` and `ids` as Arrow string arrays of one type, or None where pandas has to answer (numbers,
    mixed types)."""
    try:
        array, value_set = _arrow(values), _arrow(ids)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types Arrow cannot hold in one array
        return None
    if pa.types.is_null(array.type):  # no value at all, or only missing ones
        array = array.cast(value_set.type)
    if pa.types.is_null(value_set.type):
        value_set = value_set.cast(array.type)
    if not (_is_string(array.type) and _is_string(value_set.type)):
        return None
    if value_set.type != array.type:  # str columns are large_string, numpy's object arrays come in as string
        value_set = value_set.cast(array.type)
    return array, value_set


def _arrow(values: Iterable) -> pa.Array:
    array = pa.array(values if hasattr(values, "__len__") else list(values), from_pandas=True)
    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array


def _is_string(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _objects(values: Iterable) -> np.ndarray:
    return np.asarray(list(values), dtype=object)


class IdIndex:
    """Positions among a fixed set of distinct ids, hashed once and asked many times: `positions(values, ids)`
    as a table kept between calls. Arrow's `index_in` hashes its value set again on every call, about 20 ms for
    the 100,000 item ids of the L shop, which the candidate frame's history lookup paid every batch: 2,048 users'
    last 20 items took 18-24 ms with Arrow, 0.7-1.0 ms here. Where the values outnumber the ids and are spread
    over all of them, Arrow's probe is faster than this table's: a shard's table rules, which code 204,800 rows'
    items against 96,992 allowed ones, took 37-42 ms a batch with Arrow's lookup against 44-49 ms with this table
    when the rows name about 85,000 distinct items (the lookup alone 13-21 ms against 9-10 ms when they name
    2,600, as the L shard's do), so they keep Arrow's.
    Strings only go through the compiled table; other ids through pandas' Index.

    The table is open addressing over 64-bit hashes of each id's UTF-8 bytes (FNV-1a, then splitmix64's
    finaliser), at most half full; a probe compares a slot's hash first and then the bytes themselves, so a
    hash collision never gives a wrong answer."""

    def __init__(self, ids: Iterable):
        ids = ids if hasattr(ids, "__len__") else list(ids)
        try:
            array = _arrow(ids)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types: pandas answers
            array = None
        if array is not None and pa.types.is_null(array.type):  # no id, or only a missing one
            array = array.cast(pa.large_string())
        self._strings = array is not None and _is_string(array.type)
        if not self._strings:
            self._index = pd.Index(_objects(ids))
            return
        self._ids = array.cast(pa.large_string())
        self._null_at = int(np.flatnonzero(self._ids.is_null().to_numpy(zero_copy_only=False))[0]) \
            if self._ids.null_count else -1
        # Per slot the id's position (-1: empty) beside its hash, so a probe reads one cache line for both.
        self._table = np.full((1 << max(int(2 * len(self._ids)).bit_length(), 4), 2), -1, np.int64)
        _insert_all(*_utf8(self._ids), self._ids.is_valid().to_numpy(zero_copy_only=False), self._table)

    def positions(self, values: Iterable) -> np.ndarray:
        """Each value's position (int64) among the ids, or -1 where it is not one of them; a missing value is
        at the missing id's position where the ids hold one, as with `positions`."""
        array = _arrow(values)
        if pa.types.is_null(array.type):
            array = array.cast(pa.large_string())
        if not (self._strings and _is_string(array.type)):
            return positions(values, self._ids if self._strings else self._index)
        array = array.cast(pa.large_string())
        out = np.empty(len(array), np.int64)
        _probe_all(*_utf8(array), *_utf8(self._ids), self._table, out)
        if array.null_count:
            out[array.is_null().to_numpy(zero_copy_only=False)] = self._null_at
        return out


def _utf8(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A large_string array's offsets (int64, one past its length) and bytes, without a copy."""
    _, offsets, data = array.buffers()
    return (np.frombuffer(offsets, np.int64)[array.offset:array.offset + len(array) + 1],
            np.zeros(0, np.uint8) if data is None else np.frombuffer(data, np.uint8))


@njit(cache=True, inline="always")
def _hash(data, start, stop):
    h = np.uint64(0xCBF29CE484222325)
    for i in range(start, stop):
        h = (h ^ np.uint64(data[i])) * np.uint64(0x100000001B3)
    h ^= h >> np.uint64(30)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


@njit(cache=True, inline="always")
def _same(data, start, stop, other, other_start, other_stop):
    if stop - start != other_stop - other_start:
        return False
    for i in range(stop - start):
        if data[start + i] != other[other_start + i]:
            return False
    return True


@njit(cache=True, inline="always")
def _find(offsets, data, row, id_offsets, id_data, table, h):
    """The slot holding the id equal to data's `row`-th string (hash h), else the empty slot where it would go."""
    mask = np.uint64(len(table) - 1)
    slot = h & mask
    tag = np.int64(h)
    while table[slot, 0] >= 0:
        j = table[slot, 0]
        if table[slot, 1] == tag and _same(data, offsets[row], offsets[row + 1], id_data, id_offsets[j],
                                           id_offsets[j + 1]):
            return slot
        slot = (slot + np.uint64(1)) & mask
    return slot


@njit(cache=True)
def _insert_all(offsets, data, valid, table):
    for row in range(len(offsets) - 1):
        if not valid[row]:  # a missing id is found by `positions` itself, never by its (empty) bytes
            continue
        h = _hash(data, offsets[row], offsets[row + 1])
        slot = _find(offsets, data, row, offsets, data, table, h)
        if table[slot, 0] < 0:  # a repeated id keeps its first position, as Arrow's value sets do
            table[slot, 0], table[slot, 1] = row, np.int64(h)


@njit(cache=True, nogil=True)
def _probe_all(offsets, data, id_offsets, id_data, table, out):
    for row in range(len(offsets) - 1):
        h = _hash(data, offsets[row], offsets[row + 1])
        out[row] = table[_find(offsets, data, row, id_offsets, id_data, table, h), 0]
