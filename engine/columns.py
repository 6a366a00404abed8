"""Batches in columns: one list per field of a record type, instead of one object per record.

A hot stage reads a few fields of many records. Handing it a list of record objects means
every record is built by its producer, encoded field by field, decoded into a new object
and freed again, and each of those steps is per-record work. ``Columns`` is the same batch
as parallel lists, one per field of a msgspec Struct type (in field order):

    Columns(Tick, (symbols, times, prices, sizes))     # row i: Tick(symbols[i], times[i], ...)

* A source can emit it without building a record per row (``operators.Generator`` does).
* The typed codec (``engine.batch.MsgpackCodec``) sends it as one msgpack item per column
  and decodes each column with its field's type, so it is checked as records would be
  (string columns may go dictionary-encoded, ``engine.strings``; int and float columns
  packed, ``engine.numbers``, which decode to ``array.array``).
* ``KeyHash`` routes it by its key column; forward and broadcast edges pass it whole,
  rebalance slices it (a batch smaller than the parallelism goes record by record).
  A user's splitter gets records unless it sets ``accepts_columns``.
* A logic that reads columns says so with ``accepts_columns = True`` (the tumbling
  ``WindowAggregate``); every other logic gets records: the task calls ``rows()`` for it
  (``map`` over the columns, in C), so no operator has to know about columns.

Rows are built with the type's positional constructor, so the type must not have
keyword-only fields; nor ``__post_init__``, which decoding columns would skip. Columns
may be lists, tuples or arrays (as packed columns decode); they are never mutated in place.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterator, Sequence
from operator import attrgetter, itemgetter
from typing import Any

import msgspec

from engine.errors import DagError, RecordError

__all__ = ["Columns", "column_index", "field_names"]


def field_names(record_type: type) -> tuple[str, ...]:
    """The fields of a msgspec Struct type, in order; DagError for any other type."""
    if not isinstance(record_type, type) or not issubclass(record_type, msgspec.Struct):
        raise DagError(
            f"columns need a msgspec.Struct record type, got {record_type!r}; declare the "
            f"records as a Struct or emit lists of records"
        )
    return _field_names(record_type)


@functools.cache
def _field_names(record_type: type) -> tuple[str, ...]:
    names = record_type.__struct_fields__  # type: ignore[attr-defined]
    if not names:
        raise DagError(
            f"columns need at least one field; {record_type.__name__} has none, so emit "
            f"lists of records for it"
        )
    if hasattr(record_type, "__post_init__"):  # columns are decoded without building records
        raise DagError(
            f"columns would skip {record_type.__name__}.__post_init__ (no record is built "
            f"when they are decoded), so emit lists of records for it"
        )
    if any(p.kind is p.KEYWORD_ONLY for p in _parameters(record_type)):
        raise DagError(
            f"columns need positional fields; {record_type.__name__} has keyword-only "
            f"fields, so emit lists of records for it"
        )
    return tuple(names)


@functools.cache
def column_index(record_type: type, name: str) -> int:
    """The position of field ``name`` among ``record_type``'s columns; DagError if absent."""
    names = field_names(record_type)
    try:
        return names.index(name)
    except ValueError:
        raise DagError(
            f"{record_type.__name__} has no field {name!r}; its fields are "
            f"{', '.join(map(repr, names))}"
        ) from None


class Columns:
    """A batch of ``record_type`` records as one sequence per field (see module docstring)."""

    __slots__ = ("_n", "data", "type")

    def __init__(self, record_type: type, data: Sequence[Sequence[Any]]) -> None:
        names = field_names(record_type)
        if len(data) != len(names):
            raise RecordError(
                f"a Columns batch of {record_type.__name__} needs {len(names)} columns "
                f"({', '.join(names)}), got {len(data)}"
            )
        n = len(data[0]) if data else 0
        for name, column in zip(names, data, strict=True):
            if len(column) != n:
                raise RecordError(
                    f"a Columns batch of {record_type.__name__}: column {name!r} has "
                    f"{len(column)} values, column {names[0]!r} has {n}; every column needs "
                    f"one value per record"
                )
        self.type = record_type
        self.data = tuple(data)
        self._n = n

    @classmethod
    def from_rows(cls, record_type: type, rows: Sequence[Any]) -> Columns:
        """The columns of ``rows`` (records of ``record_type``): a conversion for tests and
        adapters; emitting columns directly is what saves the per-record work."""
        names = field_names(record_type)
        if not rows:
            return cls(record_type, tuple([] for _ in names))
        return cls(record_type, tuple(list(map(attrgetter(name), rows)) for name in names))

    def __len__(self) -> int:
        return self._n

    def __bool__(self) -> bool:
        return self._n > 0

    def __iter__(self) -> Iterator[Any]:
        return map(self.type, *self.data)

    def __getitem__(self, index: slice) -> Columns:
        if not isinstance(index, slice):
            raise TypeError("Columns supports slices only; use rows() for single records")
        return Columns(self.type, tuple(column[index] for column in self.data))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Columns):
            return NotImplemented
        return self.type is other.type and all(
            list(a) == list(b) for a, b in zip(self.data, other.data, strict=True)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Columns({self.type.__name__}, {self._n} records)"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Columns, (self.type, self.data))

    def column(self, name: str) -> Sequence[Any]:
        """The values of field ``name``, one per record."""
        return self.data[column_index(self.type, name)]

    def rows(self) -> list[Any]:
        """The records, built with the type's positional constructor."""
        return list(map(self.type, *self.data))

    def take(self, indices: Sequence[int]) -> Columns:
        """The records at ``indices``, in that order."""
        if not indices:
            return Columns(self.type, tuple([] for _ in self.data))
        if len(indices) == 1:
            i = indices[0]
            return Columns(self.type, tuple([column[i]] for column in self.data))
        pick = itemgetter(*indices)
        return Columns(self.type, tuple(pick(column) for column in self.data))


def _parameters(record_type: type) -> list[inspect.Parameter]:
    try:
        return list(inspect.signature(record_type).parameters.values())
    except (TypeError, ValueError):
        return []
