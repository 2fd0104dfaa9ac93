"""A build's search-result records as columns in one file, read through a memory map. Django-free.

At a million images, a Python dict per record costs every serving process about a gigabyte and
seconds of JSON parsing. Here each field is a column: a field with few distinct values (product,
defect type, names) is a small table of values plus one int32 code per record; a field with many
(path, content hash) is the records' values end to end with their offsets; an integer field present
in every record (the image id) is an int64 array. The arrays are views of a read-only memory map,
so every process on a host shares the page cache's one copy, and filters are array comparisons.
A record dict is built only when someone asks for that record.

File: 8-byte magic, 8-byte header length, JSON header, then 64-byte aligned arrays.
"""

from __future__ import annotations

import json
import mmap
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = b"SSREC001"
_ALIGN = 64
_ABSENT = -1  # code of a record without the field (a dict column)
_MISSING = object()
_INT64 = (-(2**63), 2**63 - 1)


def _encode(value: Any) -> bytes:
    # A type tag keeps str apart from the JSON text of other values ("1" vs 1) without paying
    # json.dumps for every string.
    if isinstance(value, str):
        return b"s" + value.encode("utf-8")
    return b"j" + json.dumps(value, ensure_ascii=False).encode("utf-8")


def _decode(data: bytes) -> Any:
    return data[1:].decode("utf-8") if data[:1] == b"s" else json.loads(data[1:])


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and _INT64[0] <= value <= _INT64[1]


def pack_records(records: Sequence[Mapping[str, Any]], *, key: str = "image_id") -> bytes:
    """The file for `records` (each has an integer `key`, unique), in their order."""
    n = len(records)
    names: dict[str, None] = {}
    for record in records:
        names.update(dict.fromkeys(record))
    arrays: list[np.ndarray] = []

    def add(array: np.ndarray) -> int:
        arrays.append(np.ascontiguousarray(array))
        return len(arrays) - 1

    columns = []
    for name in names:
        values = [record.get(name, _MISSING) for record in records]
        truthy = [v for v in values if v is not _MISSING and v]
        # Records whose (truthy) value an earlier record has: counted here, not at every load.
        repeats = len(truthy) - len({_encode(v) for v in truthy})
        column: dict[str, Any] = {"name": name, "repeats": repeats}
        if all(_is_int(v) for v in values):  # also: present in every record
            column |= {"kind": "int", "arrays": {"values": add(np.array(values, dtype=np.int64))}}
            columns.append(column)
            continue
        encoded = [b"" if v is _MISSING else _encode(v) for v in values]
        distinct = dict.fromkeys(e for e in encoded if e)
        if len(distinct) <= max(1, n // 2):
            codes = {e: i for i, e in enumerate(distinct)}
            column |= {
                "kind": "dict",
                "table": [e.decode("utf-8") for e in distinct],
                "arrays": {"codes": add(np.array([codes.get(e, _ABSENT) for e in encoded], dtype=np.int32))},
            }
        else:
            lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=n)
            column |= {
                "kind": "blob",
                "arrays": {
                    "offsets": add(np.concatenate([np.zeros(1, np.int64), np.cumsum(lengths)])),
                    "data": add(np.frombuffer(b"".join(encoded), dtype=np.uint8)),
                    # Rows in the order of their bytes: a value's rows are found by binary search.
                    "sorted": add(np.array(sorted(range(n), key=encoded.__getitem__), dtype=np.int64)),
                },
            }
        columns.append(column)
    keys = np.array([record[key] for record in records], dtype=np.int64)
    if len(np.unique(keys)) != n:
        raise ValueError(f"records repeat a {key}")
    key_order = np.argsort(keys, kind="stable").astype(np.int64)
    header: dict[str, Any] = {
        "n": n,
        "columns": columns,
        "keys": add(keys),
        "key_order": add(key_order),
        "sorted_keys": add(keys[key_order]),
    }
    layout, size = [], 0
    for array in arrays:
        layout.append({"dtype": array.dtype.str, "count": int(array.size), "offset": size})
        size += -(-array.nbytes // _ALIGN) * _ALIGN
    header["arrays"] = layout
    head = json.dumps(header, ensure_ascii=False).encode("utf-8")
    start = _data_start(len(head))
    out = bytearray(start + size)
    out[:16] = MAGIC + len(head).to_bytes(8, "little")
    out[16 : 16 + len(head)] = head
    for array, place in zip(arrays, layout, strict=True):
        out[start + place["offset"] : start + place["offset"] + array.nbytes] = array.tobytes()
    return bytes(out)


def _data_start(header_length: int) -> int:
    return -(-(16 + header_length) // _ALIGN) * _ALIGN


class RecordTable(Mapping[int, dict[str, Any]]):
    """Records by key (image id), read-only: `table[image_id]` builds that record's dict."""

    def __init__(self, buffer: bytes | mmap.mmap) -> None:
        self._buffer = buffer  # the arrays below are views of it
        if bytes(buffer[:8]) != MAGIC:
            raise ValueError("not a record table")
        length = int.from_bytes(buffer[8:16], "little")
        header = json.loads(bytes(buffer[16 : 16 + length]))
        start = _data_start(length)
        arrays = [
            np.frombuffer(buffer, dtype=np.dtype(a["dtype"]), count=a["count"], offset=start + a["offset"])
            for a in header["arrays"]
        ]
        self._n = int(header["n"])
        self.keys_in_order: np.ndarray = arrays[header["keys"]]
        self._key_order = arrays[header["key_order"]]
        self._sorted_keys = arrays[header["sorted_keys"]]
        self._columns: dict[str, dict[str, Any]] = {}
        for column in header["columns"]:
            column["arrays"] = {role: arrays[at] for role, at in column["arrays"].items()}
            if column["kind"] == "dict":
                column["values"] = [_decode(text.encode("utf-8")) for text in column["table"]]
                column["lookup"] = {text.encode("utf-8"): code for code, text in enumerate(column.pop("table"))}
            self._columns[column["name"]] = column

    @classmethod
    def open_file(cls, path: Path) -> RecordTable:
        with path.open("rb") as handle:
            return cls(mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ))

    # -- Mapping ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[int]:
        return iter(self.keys_in_order.tolist())

    def __contains__(self, key: object) -> bool:
        return self.row_of(key) is not None

    def __getitem__(self, key: int) -> dict[str, Any]:
        row = self.row_of(key)
        if row is None:
            raise KeyError(key)
        return self.record(row)

    # -- rows -----------------------------------------------------------------------------------

    def row_of(self, key: object) -> int | None:
        if not _is_int(key) and not isinstance(key, np.integer):
            return None
        at = int(np.searchsorted(self._sorted_keys, key))
        if at < self._n and self._sorted_keys[at] == key:
            return int(self._key_order[at])
        return None

    def record(self, row: int) -> dict[str, Any]:
        record = {}
        for name, column in self._columns.items():
            found, value = self._value(column, row)
            if found:
                record[name] = value
        return record

    def _value(self, column: dict[str, Any], row: int) -> tuple[bool, Any]:
        arrays = column["arrays"]
        if column["kind"] == "int":
            return True, int(arrays["values"][row])
        if column["kind"] == "dict":
            code = int(arrays["codes"][row])
            return (False, None) if code == _ABSENT else (True, column["values"][code])
        data = self._blob(column, row)
        return (False, None) if not data else (True, _decode(data))

    def _blob(self, column: dict[str, Any], row: int) -> bytes:
        offsets = column["arrays"]["offsets"]
        return column["arrays"]["data"][offsets[row] : offsets[row + 1]].tobytes()

    # -- whole columns --------------------------------------------------------------------------

    def rows_equal(self, name: str, value: Any) -> np.ndarray:
        """Boolean mask over rows: the record has field `name` and it equals `value`."""
        column = self._columns.get(name)
        mask = np.zeros(self._n, dtype=bool)
        if column is None:
            return mask
        arrays = column["arrays"]
        if column["kind"] == "int":
            return arrays["values"] == value if _is_int(value) else mask
        encoded = _encode(value)
        if column["kind"] == "dict":
            code = column["lookup"].get(encoded)
            return mask if code is None else arrays["codes"] == code
        rows = arrays["sorted"]
        low, high = self._bisect(column, encoded, left=True), self._bisect(column, encoded, left=False)
        mask[rows[low:high]] = True
        return mask

    def rows_present(self, name: str) -> np.ndarray:
        column = self._columns.get(name)
        if column is None:
            return np.zeros(self._n, dtype=bool)
        arrays = column["arrays"]
        if column["kind"] == "int":
            return np.ones(self._n, dtype=bool)
        if column["kind"] == "dict":
            return arrays["codes"] != _ABSENT
        return np.diff(arrays["offsets"]) > 0

    def _bisect(self, column: dict[str, Any], encoded: bytes, *, left: bool) -> int:
        rows, low, high = column["arrays"]["sorted"], 0, self._n
        while low < high:
            middle = (low + high) // 2
            current = self._blob(column, int(rows[middle]))
            if current < encoded or (not left and current == encoded):
                low = middle + 1
            else:
                high = middle
        return low

    def repeats(self, name: str) -> int:
        """Records whose truthy value of `name` an earlier record already has."""
        column = self._columns.get(name)
        return int(column["repeats"]) if column else 0
