"""Compiling hot per-record code for the field names a config gives.

``attrgetter("ts")(record)`` costs several times ``record.ts`` on a msgspec Struct, and the
window and aggregation loops read a few fields per record. So, as ``dataclasses`` compiles
``__init__`` for a class's fields, the loops that run per record are written as source
templates with the field names filled in (validated as identifiers first) and compiled once
per distinct set of names. The source is registered with ``linecache`` so tracebacks through
generated code show its lines.
"""

from __future__ import annotations

import itertools
import keyword
import linecache
from collections.abc import Callable
from typing import Any

from engine.errors import DagError

__all__ = ["compile_function", "identifier"]

_serial = itertools.count()


def identifier(name: Any, what: str) -> str:
    """``name`` if it can be written as ``record.<name>``; DagError otherwise."""
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise DagError(f"{what} must be a field name (a Python identifier), got {name!r}")
    return name


def compile_function(
    name: str, source: str, namespace: dict[str, Any] | None = None
) -> Callable[..., Any]:
    """Compile ``source``, which defines function ``name``, with ``namespace`` as globals."""
    filename = f"<ringflow generated {name} #{next(_serial)}>"
    lines = source.splitlines(keepends=True)
    linecache.cache[filename] = (len(source), None, lines, filename)
    scope = dict(namespace or {})
    exec(compile(source, filename, "exec"), scope)
    fn: Callable[..., Any] = scope[name]
    return fn
