"""partitioning/_native.c: the key-hash splitter's Columns loop in C.

The routine is checked against a plain Python model of what it must do, and the splitter
against itself with the routine switched off, so the C path and the Python path it stands
in for cannot drift apart. The module is optional (built where a C compiler is found); the
tests that need it skip, saying why, where it is absent.
"""

from __future__ import annotations

import gc
import sys
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import partitioning.keyhash as keyhash
from engine.columns import Columns
from engine.records import Tick
from partitioning import KeyHash

native = pytest.importorskip(
    "partitioning._native", reason="partitioning._native is not built (no C compiler)"
)
split_columns = native.split_columns

PROPERTY = settings(max_examples=200, deadline=None)


def _model(keys: list[Any], cache: dict[Any, int], parallelism: int, columns: tuple) -> list:
    """What split_columns returns, written the obvious way."""
    rows: list[list[int]] = [[] for _ in range(parallelism)]
    for i, key in enumerate(keys):
        rows[cache[key]].append(i)
    return [
        tuple([column[i] for i in picked] for column in columns) if picked else None
        for picked in rows
    ]


@PROPERTY
@given(
    st.data(),
    st.lists(st.text(max_size=4) | st.binary(max_size=3) | st.integers(-(2**70), 2**70)),
    st.integers(1, 9),
    st.integers(0, 3),
)
def test_split_columns_deals_rows_out_as_the_model_does(
    data: Any, keys: list[Any], parallelism: int, extra_columns: int
) -> None:
    cache = {key: data.draw(st.integers(0, parallelism - 1)) for key in keys}
    columns = (keys, *([object() for _ in keys] for _ in range(extra_columns)))
    if data.draw(st.booleans()):
        columns = tuple(tuple(column) for column in columns)  # tuples work as lists do
    got = split_columns(keys, cache, parallelism, columns)
    assert got == _model(keys, cache, parallelism, columns)
    for group in got:
        if group is not None:
            assert all(type(column) is list for column in group)


ARRAY_CODES = ["q", "l", "d"] if array("l").itemsize == 8 else ["q", "d"]


@PROPERTY
@given(
    st.data(),
    st.lists(st.sampled_from(["a", "b", "c", "d", "e"])),
    st.integers(1, 6),
    st.lists(st.sampled_from(["list", *ARRAY_CODES]), max_size=4),
)
def test_split_columns_deals_packed_columns_out_as_arrays_of_their_type(
    data: Any, keys: list[str], parallelism: int, kinds: list[str]
) -> None:
    """A packed column (an array of 8-byte items, as a channel decodes it or the CSV
    source parses it) is dealt out as arrays of the same type code, values as they are."""
    cache = {key: data.draw(st.integers(0, parallelism - 1)) for key in keys}
    columns: list[Any] = [keys]
    for kind in kinds:
        if kind == "list":
            columns.append([object() for _ in keys])
        elif kind == "d":
            columns.append(array("d", (i + 0.5 for i in range(len(keys)))))
        else:
            columns.append(array(kind, (i - 2**62 for i in range(len(keys)))))
    got = split_columns(keys, cache, parallelism, tuple(columns))
    want = _model(keys, cache, parallelism, tuple(columns))
    assert got is not None and len(got) == len(want)
    for group, expected in zip(got, want, strict=True):
        assert (group is None) == (expected is None)
        if group is None:
            continue
        assert [list(column) for column in group] == [list(column) for column in expected]
        for column, source in zip(group, columns, strict=True):
            if type(source) is array:
                assert type(column) is array and column.typecode == source.typecode
            else:
                assert type(column) is list


def test_split_columns_declines_arrays_of_other_item_sizes_and_counts_their_length() -> None:
    cache = {"a": 0, "b": 1}
    keys = ["a", "b"]
    for code in ("i", "f", "b", "H"):
        assert split_columns(keys, cache, 2, (keys, array(code, [1, 2]))) is None
    with pytest.raises(ValueError, match="column 1 has 3 values, the keys 2"):
        split_columns(keys, cache, 2, (keys, array("q", [1, 2, 3])))


@pytest.mark.parametrize(
    "keys",
    [
        ["a", "missing"],  # not cached: the Python path places it
        ["a", True],  # bool: an int subclass, left to the Python path
        ["a", 1.5],  # float: refused there, with the record named
        ["a", ("a",)],  # tuple: its parts could run Python code when compared
        ["a", type("Text", (str,), {})("a")],  # a str subclass, likewise
    ],
)
def test_split_columns_declines_keys_it_cannot_look_up_safely(keys: list[Any]) -> None:
    cache = {"a": 0, 1: 1, 1.5: 0, ("a",): 1}
    assert split_columns(keys, cache, 2, (keys,)) is None


def test_split_columns_declines_columns_that_are_not_lists_tuples_or_packed() -> None:
    cache = {"a": 0, "b": 1}
    assert split_columns(iter(["a"]), cache, 2, (["a"],)) is None
    assert split_columns(["a", "b"], cache, 2, (["a", "b"], range(2))) is None


def test_split_columns_with_no_columns_only_checks_the_keys() -> None:
    assert split_columns(["a", "b"], {"a": 0, "b": 0}, 1, ()) == [()]
    assert split_columns(["a", "x"], {"a": 0}, 1, ()) is None
    assert split_columns([], {}, 3, ()) == [None, None, None]


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        ((["a"], {"a": 0}, 1), TypeError, "takes 4 arguments"),
        ((["a"], {"a": 0}, 0, (["a"],)), ValueError, r"parallelism 0 is outside \[1, 32768\]"),
        ((["a"], {"a": 0}, 32769, (["a"],)), ValueError, "parallelism 32769 is outside"),
        ((["a"], {"a": 0}, "2", (["a"],)), TypeError, "integer"),
        ((["a"], [("a", 0)], 1, (["a"],)), TypeError, "cache must be a dict"),
        ((["a"], {"a": 0}, 1, [["a"]]), TypeError, "columns must be a tuple"),
        ((["a"], {"a": 0}, 1, (["a", "b"],)), ValueError, "column 0 has 2 values, the keys 1"),
        ((["a"], {"a": 2}, 2, (["a"],)), ValueError, "maps a key to replica 2, outside"),
        ((["a"], {"a": -1}, 2, (["a"],)), ValueError, "maps a key to replica -1, outside"),
        ((["a"], {"a": "0"}, 2, (["a"],)), TypeError, "integer"),
    ],
)
def test_split_columns_refuses_bad_arguments(args: tuple, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        split_columns(*args)


def test_split_columns_holds_one_reference_per_placed_value() -> None:
    value = object()
    keys = ["a", "b", "a"]
    before = sys.getrefcount(value)
    got = split_columns(keys, {"a": 0, "b": 1}, 2, ([value, value, value],))
    assert sys.getrefcount(value) == before + 3
    del got
    assert sys.getrefcount(value) == before


@pytest.mark.parametrize(
    ("make", "shorten"),
    [
        (list, list.clear),
        (lambda values: array("d", values), lambda column: column.__delitem__(slice(None))),
    ],
    ids=["list", "array"],
)
def test_split_columns_declines_when_a_finalizer_empties_a_column_mid_call(
    make: Any, shorten: Any
) -> None:
    """The lists it allocates can start a garbage collection, and with it a finalizer (Python
    code) that changes a column, a list or a packed one: the routine must notice and
    decline, not copy past it."""
    replicas = 1000  # enough new lists to start a collection with the threshold at one
    keys = [f"k{i}" for i in range(replicas)] * 20
    column = make(range(len(keys)))
    cache = {f"k{i}": i for i in range(replicas)}
    ran = []

    class Finalizer:
        def __del__(self) -> None:
            if not ran:
                ran.append(True)
                shorten(column)

    columns = (keys, column)
    threshold, enabled = gc.get_threshold(), gc.isenabled()
    gc.disable()  # no collection until the routine allocates: not before the call
    try:
        cycle = Finalizer()
        cycle.self = cycle  # type: ignore[attr-defined]  # only a collection frees it
        del cycle
        gc.set_threshold(1)
        gc.enable()  # allocates nothing; the routine's first new list starts a collection
        got = split_columns(keys, cache, replicas, columns)
    finally:
        gc.set_threshold(*threshold)
        if not enabled:
            gc.disable()
    assert ran and len(column) == 0
    assert got is None


def test_split_columns_at_the_largest_parallelism() -> None:
    keys = [f"k{i}" for i in range(100)]
    cache = {key: (i * 331) % 32768 for i, key in enumerate(keys)}
    got = split_columns(keys, cache, 32768, (keys,))
    assert got == _model(keys, cache, 32768, (keys,))


# ---------------------------------------------------------------------------------------
# The splitter with and without it


@contextmanager
def _python_only() -> Iterator[None]:
    saved = keyhash._native_split_columns
    keyhash._native_split_columns = None
    try:
        yield
    finally:
        keyhash._native_split_columns = saved


def _rows(groups: list[tuple[int, Any]]) -> list[tuple[int, list[Tick]]]:
    assert all(type(group) is Columns for _, group in groups)
    return sorted((replica, group.rows()) for replica, group in groups)


@PROPERTY
@given(
    names=st.lists(st.sampled_from(["AAPL", "MSFT", "TSLA", "", "é"]) | st.text(max_size=3)),
    parallelism=st.integers(1, 6),
    warm=st.integers(0, 20),
)
def test_the_splitter_routes_alike_with_and_without_the_routine(
    names: list[str], parallelism: int, warm: int
) -> None:
    ticks = Columns.from_rows(Tick, [Tick(n, i, float(i), 1.0) for i, n in enumerate(names)])
    with _python_only():
        python = KeyHash("symbol").build(parallelism, 0)
        python.split(ticks[:warm])
        want = [_rows(python.split(ticks)) for _ in range(2)]
    fast = KeyHash("symbol").build(parallelism, 0)
    fast.split(ticks[:warm])
    assert [_rows(fast.split(ticks)) for _ in range(2)] == want
    assert fast._cache == python._cache


@PROPERTY
@given(
    names=st.lists(st.sampled_from(["AAPL", "MSFT", "TSLA", "é"])),
    parallelism=st.integers(1, 6),
)
def test_the_splitter_routes_packed_columns_alike_with_and_without_the_routine(
    names: list[str], parallelism: int
) -> None:
    n = len(names)
    data = (names, array("q", range(n)), array("d", map(float, range(n))), array("d", [1.0] * n))
    ticks = Columns(Tick, data)
    with _python_only():
        python = KeyHash("symbol").build(parallelism, 0)
        want = [_rows(python.split(ticks)) for _ in range(2)]
    fast = KeyHash("symbol").build(parallelism, 0)
    assert [_rows(fast.split(ticks)) for _ in range(2)] == want


class _Symbol(str):
    """A str subclass with its own ``__eq__``: Python code, were C to compare with it."""

    __hash__ = str.__hash__

    def __eq__(self, other: object) -> bool:
        return str.__eq__(self, other)


def test_the_routine_is_not_used_while_the_cache_holds_a_key_of_another_type(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []

    def spy(*args: Any) -> Any:
        calls.append(args[2])
        return split_columns(*args)

    monkeypatch.setattr(keyhash, "_native_split_columns", spy)
    monkeypatch.setattr(keyhash, "CACHE_LIMIT", 3)
    plain = Columns.from_rows(Tick, [Tick(s, i, 1.0, 1.0) for i, s in enumerate("ab")])
    odd = Columns.from_rows(Tick, [Tick(_Symbol("a"), 0, 1.0, 1.0)])
    splitter = KeyHash("symbol").build(2, 0)
    splitter.split(odd)  # the routine declines it; the Python path caches it
    calls.clear()  # from now on, comparing a key with the cached one could run Python code
    splitter.split(plain)
    splitter.split(plain)
    assert calls == []
    splitter.split(Columns.from_rows(Tick, [Tick("c", 0, 1.0, 1.0)]))  # fills the cache
    splitter.split(Columns.from_rows(Tick, [Tick("d", 0, 1.0, 1.0)]))  # clears it: plain keys
    splitter.split(Columns.from_rows(Tick, [Tick("d", 1, 1.0, 1.0)]))
    assert calls == [2]


def test_the_routine_serves_a_warm_splitter() -> None:
    """Once every key is cached the splitter's answer comes from the C routine."""
    ticks = Columns.from_rows(Tick, [Tick(s, i, 1.0, 1.0) for i, s in enumerate("abcabd")])
    splitter = KeyHash("symbol").build(3, 0)
    splitter.split(ticks)  # places the keys (Python path)
    calls = []

    def spy(*args: Any) -> Any:
        calls.append(args[2])
        return split_columns(*args)

    saved = keyhash._native_split_columns
    keyhash._native_split_columns = spy
    try:
        groups = splitter.split(ticks)
    finally:
        keyhash._native_split_columns = saved
    assert calls == [3]
    assert sorted(t.ts for _, group in groups for t in group.rows()) == list(range(6))


def test_split_columns_takes_any_number_of_columns() -> None:
    keys = ["a", "b", "a"]
    columns = (keys, *(array("q", [c, c + 1, c + 2]) for c in range(300)))
    got = split_columns(keys, {"a": 0, "b": 1}, 2, columns)
    assert got is not None
    assert [list(column) for column in got[0]][1:] == [[c, c + 2] for c in range(300)]
    assert [list(column) for column in got[1]][1:] == [[c + 1] for c in range(300)]
