"""Keys of records: a field name, a tuple of field names, or a picklable function.

``key_getter(key)`` turns the setting into a ``record -> key`` function; a tuple of two or
more names gives a tuple key, a tuple of one name that field's value (as ``attrgetter``).
Field names must be identifiers (they are compiled into the hot loops, see
``operators.codegen``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from operator import attrgetter
from typing import Any

from engine.errors import DagError
from engine.validate import key_fields
from operators.codegen import compile_function, identifier

__all__ = ["KeySpec", "check_key", "key_and_time", "key_fields", "key_getter"]

KeySpec = str | tuple[str, ...] | Callable[[Any], Any]


def check_key(key: Any, who: str) -> None:
    """Raise DagError unless ``key`` is a usable key setting; ``who`` names the operator."""
    if isinstance(key, str):
        identifier(key, f"{who} key")
    elif isinstance(key, tuple) and key:
        for name in key:
            identifier(name, f"{who} key")
    elif not callable(key):
        raise DagError(
            f"{who} key must be a field name, a tuple of field names or a module-level "
            f"function of the record, got {key!r}"
        )


def key_getter(key: KeySpec) -> Callable[[Any], Any]:
    """A function ``record -> key``."""
    if isinstance(key, str):
        return attrgetter(key)
    if isinstance(key, tuple):
        return attrgetter(*key)
    return key


@functools.lru_cache(maxsize=64)
def _compiled_key_and_time(key: str, time: str) -> Callable[[Any], tuple[Any, int]]:
    source = f"def key_and_time(record):\n    return record.{key}, record.{time}\n"
    return compile_function("key_and_time", source)


def key_and_time(key: KeySpec, time: str) -> Callable[[Any], tuple[Any, int]]:
    """A function ``record -> (key, event time)``."""
    if isinstance(key, str):
        return _compiled_key_and_time(identifier(key, "key"), identifier(time, "time"))
    get_key, get_time = key_getter(key), attrgetter(time)
    return lambda record: (get_key(record), get_time(record))
