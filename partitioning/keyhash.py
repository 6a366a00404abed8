"""Key-hash partitioning: records with equal keys go to the same downstream replica.

A key becomes bytes, the bytes a key group, the key group a replica:

    key_bytes(key)   str: UTF-8 (lone surrogates kept with "surrogatepass")
                     bytes: as they are
                     int: decimal ASCII, b"-42" (bool is an int: True is b"1", like 1)
                     tuple: its parts encoded and joined with b"\\x1f" (nested tuples alike)
                     anything else: RecordError
    key group        mmh3.hash(key_bytes, seed, signed=False) % max_parallelism
    replica          key_group * parallelism // max_parallelism

The replica rule is Flink's: each replica owns a contiguous range of key groups, so keyed
state can later move between replicas a key group at a time when a job is rescaled. That is
why max_parallelism (the number of key groups) is fixed for the life of a job's state and
bounds its parallelism. Python's ``hash()`` is never used: it is salted per process
(PYTHONHASHSEED), and every upstream replica, in its own process, must agree.

Booleans hash like the ints they equal: a dict (the splitter's cache, a keyed operator's
state) already treats True and 1 as one key, so routing them apart could not be honoured
downstream. The same goes for any key equal to a cached one: a float 1.0 that arrives after
the int 1 is routed as 1. Floats are otherwise refused, as are other types: convert them in
a key function to str or int. Distinct keys may share a key group; that only puts them on
the same replica (``("a\\x1fb",)`` and ``("a", "b")`` encode alike, as do ``"a"`` and
``("a",)``).

The splitter caches key -> replica in a dict: market data has a few thousand symbols that
repeat in every batch, so after warm-up the hot loop costs one attribute load (compiled
into the loop for an attribute-name key), one dict lookup and one list append per record.
The cache is cleared when it reaches ``CACHE_LIMIT`` distinct keys, which bounds memory
when keys are unbounded (order ids) at the cost of re-hashing them.

A ``Columns`` batch keyed by a field whose keys are all cached is dealt out by one C routine
(``partitioning/_native.c``): the lookup and the copy of each row into its replica's
columns, with no Python bytecode per row. It is built at install where a C compiler is
found; without it the same work runs in Python, several times slower, with the same result.
"""

from __future__ import annotations

import functools
import keyword
import os
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import mmh3

from partitioning._errors import dag_error, record_error
from partitioning.base import DEFAULT_MAX_PARALLELISM, Partitioner, Splitter, check_parallelism

if TYPE_CHECKING:  # not at run time: see partitioning/_errors.py
    from engine.columns import Columns

MAX_KEY_GROUPS = 1 << 15  # as in Flink: more key groups only add per-group overhead
MAX_SEED = 0xFFFF_FFFF  # mmh3 takes an unsigned 32-bit seed
CACHE_LIMIT = 1_000_000  # distinct keys a splitter remembers before it starts over
_SEPARATOR = b"\x1f"  # ASCII unit separator between the parts of a tuple key
_ACCEPTED = "keys must be str, bytes, int or tuples of those"


def key_bytes(key: object) -> bytes:
    """The bytes that ``key`` hashes as (see the module docstring); RecordError for a
    key of any other type."""
    data = _encode(key)
    if data is None:
        raise record_error(_unsupported(key))
    return data


def _encode(key: object) -> bytes | None:
    if isinstance(key, str):
        return key.encode("utf-8", "surrogatepass")
    if isinstance(key, bytes):
        return key
    if isinstance(key, int):
        return b"%d" % key
    if isinstance(key, tuple):
        parts = []
        for part in key:
            data = _encode(part)
            if data is None:
                return None
            parts.append(data)
        return _SEPARATOR.join(parts)
    return None


def key_group(key: object, max_parallelism: int = DEFAULT_MAX_PARALLELISM, seed: int = 0) -> int:
    """The key group of ``key``, in [0, max_parallelism): the same in every process."""
    _check_config(max_parallelism, seed)
    group: int = mmh3.hash(key_bytes(key), seed, signed=False) % max_parallelism
    return group


def replica_for(
    key: object,
    parallelism: int,
    max_parallelism: int = DEFAULT_MAX_PARALLELISM,
    seed: int = 0,
) -> int:
    """The downstream replica, in [0, parallelism), that a KeyHash edge sends ``key`` to."""
    check_parallelism(parallelism, max_parallelism=max_parallelism, what="replica_for")
    return key_group(key, max_parallelism, seed) * parallelism // max_parallelism


@dataclass(frozen=True)
class KeyHash(Partitioner):
    """Send each record to the replica that owns its key.

    ``key`` is an attribute name (``"symbol"``; dotted names such as ``"quote.symbol"``
    work, as for ``operator.attrgetter``) or a picklable callable record -> key: a
    module-level function or an ``operator.attrgetter`` / ``itemgetter``, not a lambda.
    ``max_parallelism`` is the number of key groups, in [1, 32768]; ``seed`` the mmh3
    seed, in [0, 2**32).
    """

    key: str | Callable[[Any], Hashable]
    max_parallelism: int = DEFAULT_MAX_PARALLELISM
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.key, str):
            if not self.key:
                raise dag_error(
                    "key_hash: the key attribute name is empty; name the attribute that "
                    "holds the key, e.g. KeyHash('symbol'), or pass a function record -> key"
                )
            if not _is_attribute_path(self.key):
                raise dag_error(
                    f"key_hash: key {self.key!r} is not an attribute name (a Python "
                    f"identifier, or dotted identifiers such as 'quote.symbol'); name the "
                    f"record's attribute, or pass a picklable function record -> key"
                )
        elif not callable(self.key):
            raise dag_error(
                f"key_hash: key must be an attribute name (str, e.g. 'symbol') or a "
                f"picklable function record -> key, got {self.key!r} "
                f"({type(self.key).__name__})"
            )
        _check_config(self.max_parallelism, self.seed)

    def build(self, parallelism: int, upstream_replica: int) -> Splitter:
        check_parallelism(
            parallelism,
            upstream_replica,
            max_parallelism=self.max_parallelism,
            what=self.describe(),
        )
        return KeyHashSplitter(self, parallelism)

    def describe(self) -> str:
        key = self.key if isinstance(self.key, str) else _callable_repr(self.key)
        extra = ""
        if self.max_parallelism != DEFAULT_MAX_PARALLELISM:
            extra += f", max_parallelism={self.max_parallelism}"
        if self.seed:
            extra += f", seed={self.seed}"
        return f"key_hash({key}{extra})"


class KeyHashSplitter(Splitter):
    """Live side of KeyHash: groups batches by replica, caching key -> replica."""

    accepts_columns = True

    __slots__ = (
        "_by_attribute",
        "_cache",
        "_exact_keys",
        "_fill",
        "_get_key",
        "_key_field",
        "_max_parallelism",
        "_parallelism",
        "_seed",
        "_where",
    )

    def __init__(self, config: KeyHash, parallelism: int) -> None:
        self._parallelism = parallelism
        self._max_parallelism = config.max_parallelism
        self._seed = config.seed
        self._cache: dict[Any, int] = {}
        # Whether every cached key is an exact str, bytes or int: only then may the C routine
        # look keys up, since comparing with any other key type can run Python code.
        self._exact_keys = True
        self._where = config.describe()
        self._by_attribute = isinstance(config.key, str)
        # A plain field name keys a Columns batch by its column; anything else by its rows.
        self._key_field = (
            config.key if isinstance(config.key, str) and "." not in config.key else None
        )
        if isinstance(config.key, str):
            self._get_key: Callable[[Any], Any] = attrgetter(config.key)
            self._fill = _compile_fill(f"record.{config.key}")
        else:
            self._get_key = config.key
            self._fill = _compile_fill("get_key(record)")

    def split(self, batch: list[Any] | Columns) -> list[tuple[int, Any]]:
        if not batch:
            return []
        if type(batch) is _columns():
            return self._split_columns(batch)  # type: ignore[arg-type]
        groups: list[list[Any]] = [[] for _ in range(self._parallelism)]
        try:
            self._fill(iter(batch), self._cache, groups, self._place, self._get_key)
        except (TypeError, AttributeError) as exc:
            self._explain(batch, exc)  # type: ignore[arg-type]
            raise
        return [(replica, group) for replica, group in enumerate(groups) if group]

    def _split_columns(self, batch: Columns) -> list[tuple[int, Any]]:
        """Route a Columns batch by its key column: the replica of every key from the cache,
        then each replica's rows taken from every column. Both in one C routine
        (partitioning/_native.c) when it is built and every key is cached; else here: the
        lookups through ``map`` (new keys placed as they come), an index list per replica
        and ``itemgetter`` gathers."""
        name = self._key_field
        if name is None or name not in getattr(batch.type, "__struct_fields__", ()):
            return self.split(batch.rows())  # key function or path: by records, as ever
        keys = batch.column(name)
        cache = self._cache
        if _native_split_columns is not None and self._exact_keys:
            # R = 1 needs no copy: the routine only checks that every key is cached.
            data = batch.data if self._parallelism > 1 else ()
            dealt = _native_split_columns(keys, cache, self._parallelism, data)
            if dealt is not None:
                if self._parallelism == 1:
                    return [(0, batch)]
                kind, make = batch.type, _columns()
                return [(r, make(kind, cols)) for r, cols in enumerate(dealt) if cols]
        try:
            replicas = list(map(cache.__getitem__, keys))
        except TypeError:  # an unhashable key: the records path explains it
            return self.split(batch.rows())
        except KeyError:
            # One pass that places each new key as it comes: placing may clear the cache
            # (CACHE_LIMIT), so keys placed earlier in the batch cannot be looked up again.
            get, place, data, record_type = cache.get, self._place, batch.data, batch.type
            replicas = []
            try:
                for i, key in enumerate(keys):
                    replica = get(key)
                    if replica is None:
                        replica = place(key, record_type(*(column[i] for column in data)))
                    replicas.append(replica)
            except TypeError:  # an unhashable key: the records path explains it
                return self.split(batch.rows())
        if self._parallelism == 1:
            return [(0, batch)]
        groups: list[list[int]] = [[] for _ in range(self._parallelism)]
        appends = [group.append for group in groups]
        for i, replica in enumerate(replicas):
            appends[replica](i)
        return [(replica, batch.take(group)) for replica, group in enumerate(groups) if group]

    def _place(self, key: Any, record: Any) -> int:
        """Hash a key seen for the first time, remember its replica and return it."""
        data = _encode(key)
        if data is None:  # raised while handling the cache miss: that KeyError is no news
            message = f"{self._where}, {_record_name(record)}: {_unsupported(key)}"
            raise record_error(message) from None
        group = mmh3.hash(data, self._seed, signed=False) % self._max_parallelism
        replica: int = group * self._parallelism // self._max_parallelism
        cache = self._cache
        if len(cache) >= CACHE_LIMIT:
            cache.clear()
            self._exact_keys = True
        if type(key) not in _EXACT_KEY_TYPES:
            self._exact_keys = False
        cache[key] = replica
        return replica

    def _explain(self, batch: list[Any], exc: Exception) -> None:
        """Raise RecordError when ``exc`` came from a record without the key attribute or
        from an unhashable key; return otherwise (then the error came from the key
        function, and is the user's to see as it is)."""
        for record in batch:
            try:
                key = self._get_key(record)
            except AttributeError as missing:
                if not self._by_attribute:
                    return
                raise record_error(
                    f"{self._where}, {_record_name(record)}: the record has no key attribute "
                    f"({missing}); key by an attribute the upstream records have, or pass a "
                    f"function record -> key (operator.itemgetter('name') for dicts)"
                ) from exc
            except Exception:
                return
            try:
                hash(key)
            except TypeError as unhashable:
                raise record_error(
                    f"{self._where}, {_record_name(record)}: the key {_short_repr(key)} cannot "
                    f"be hashed ({unhashable}); {_ACCEPTED}. Convert it in the key function, "
                    f"e.g. a list to a tuple"
                ) from exc


_Place = Callable[[Any, Any], int]  # (key, record) -> replica, for a key not yet cached
_Fill = Callable[
    [Iterator[Any], dict[Any, int], list[list[Any]], _Place, Callable[[Any], Any]], None
]

# The hot loop, compiled once per key expression: ``record.symbol`` for an attribute name
# (in 3.11 an attribute load is several times cheaper than calling an attrgetter, which
# has no vectorcall), ``get_key(record)`` for a key function. A cache hit costs the key, one
# dict subscript and one append. A miss raises KeyError out of the for loop (a try costs
# nothing in 3.11 until it raises); the handler places that record through the splitter's
# ``_place`` and the loop resumes with the next record of the same iterator. A KeyError
# raised by a key function itself is raised again by the handler's second call.
_FILL_SOURCE = """\
def fill(records, cache, groups, place, get_key):
    while True:
        try:
            for record in records:
                groups[cache[{key}]].append(record)
            return
        except KeyError:
            key = {key}
            groups[place(key, record)].append(record)
"""


@functools.cache
def _compile_fill(key_expression: str) -> _Fill:
    source = _FILL_SOURCE.format(key=key_expression)
    namespace: dict[str, Any] = {}
    exec(compile(source, f"<key_hash fill: {key_expression}>", "exec"), namespace)
    fill: _Fill = namespace["fill"]
    return fill


def _native_split() -> Callable[..., Any] | None:
    """The C version of ``KeyHashSplitter._split_columns``'s loop (partitioning/_native.c),
    if it was built."""
    try:
        from partitioning import _native
    except ImportError:  # built without a C compiler: the Python loop does the same, slower
        return None
    return _native.split_columns


_native_split_columns = _native_split()
NATIVE = _native_split_columns is not None
"""Whether key-hash routing of Columns batches runs in C here (the extension was built)."""
_EXACT_KEY_TYPES = (str, bytes, int)


@functools.cache
def _columns() -> type:
    """``engine.columns.Columns``, imported on first use (see partitioning/_errors.py)."""
    from engine.columns import Columns

    return Columns


def _is_attribute_path(name: str) -> bool:
    """True for ``symbol`` or ``quote.symbol``: safe to compile as ``record.<name>``."""
    return all(part.isidentifier() and not keyword.iskeyword(part) for part in name.split("."))


def _unsupported(key: object) -> str:
    bad = key
    while isinstance(bad, tuple):  # find the part that cannot be encoded
        bad = next(part for part in bad if _encode(part) is None)
    inside = f" in the tuple key {_short_repr(key)}" if bad is not key else ""
    return (
        f"cannot hash a key of type {type(bad).__name__} ({_short_repr(bad)}){inside}; "
        f"{_ACCEPTED}. Convert it in the key function, e.g. KeyHash(my_module.key_of) where "
        f"key_of returns str(...) or int(...)"
    )


def _check_config(max_parallelism: int, seed: int) -> None:
    if (
        isinstance(max_parallelism, bool)
        or not isinstance(max_parallelism, int)
        or not 1 <= max_parallelism <= MAX_KEY_GROUPS
    ):
        raise dag_error(
            f"key_hash: max_parallelism must be an int in [1, {MAX_KEY_GROUPS}], got "
            f"{max_parallelism!r}; it is the number of key groups and the most replicas the "
            f"edge can feed ({DEFAULT_MAX_PARALLELISM} unless you need more)"
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise dag_error(f"key_hash: seed must be an int in [0, 2**32), got {seed!r}")


def _callable_repr(fn: Callable[..., Any]) -> str:
    """``<function by_symbol at jobs.py:12>`` for functions; repr() for the rest
    (``operator.attrgetter('symbol')``)."""
    code = getattr(fn, "__code__", None)
    if code is None:
        return repr(fn)
    name = getattr(fn, "__qualname__", getattr(fn, "__name__", "?"))
    return f"<function {name} at {os.path.basename(code.co_filename)}:{code.co_firstlineno}>"


def _record_name(record: Any) -> str:
    return f"record {_short_repr(record)} of type {type(record).__name__}"


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
