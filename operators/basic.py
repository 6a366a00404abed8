"""Per-record transforms: ``Map``, ``Filter`` and ``FlatMap``.

Each takes a function of one record and applies it to a whole batch in one comprehension.
The function travels to worker processes by pickle, so it must be importable by name: a
module-level ``def`` (or a builtin, or an instance of a module-level class), not a lambda, a
closure or a nested function. ``Dag.validate()`` refuses one that does not pickle.

``output_type`` declares the msgspec Struct the operator emits, so the edge after it uses the
typed codec; leave it None when unknown (the edge falls back to pickle). ``Filter`` emits
its input records, so its output has its input's type unless it names one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from engine.errors import DagError
from engine.operator import Batch, Context, Operator, OperatorLogic, PassesInput

__all__ = ["Filter", "FlatMap", "Map", "describe"]


def describe(fn: Any) -> str:
    """A readable name for a user function: ``<function my_fn at my_module.py:12>``."""
    code = getattr(fn, "__code__", None)
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if code is not None and name is not None:
        return f"<function {name} at {code.co_filename.rsplit('/', 1)[-1]}:{code.co_firstlineno}>"
    if name is not None:
        return f"<{type(fn).__name__} {getattr(fn, '__module__', '?')}.{name}>"
    return repr(fn)


def check_function(fn: Any, who: str) -> None:
    """Raise DagError unless ``fn`` is callable; ``who`` names the setting."""
    if not callable(fn):
        raise DagError(
            f"{who} must be a function of one record (a module-level def, so it pickles), "
            f"got {type(fn).__name__} {fn!r}"
        )


@dataclass(frozen=True, repr=False)
class Map(Operator):
    """Replace each record with ``fn(record)``."""

    fn: Callable[[Any], Any]
    output_type: Any = None

    def __post_init__(self) -> None:
        check_function(self.fn, "Map fn")

    def __repr__(self) -> str:
        return f"Map({describe(self.fn)})"

    def build(self, ctx: Context) -> OperatorLogic:
        return _MapLogic(self.fn)


@dataclass(frozen=True, repr=False)
class Filter(PassesInput, Operator):
    """Keep the records for which ``fn(record)`` is true. Its output has the input's record
    type (``passes_input``); ``output_type`` names one where the input edges have none."""

    fn: Callable[[Any], Any]
    output_type: Any = None

    def __post_init__(self) -> None:
        check_function(self.fn, "Filter fn")

    def __repr__(self) -> str:
        return f"Filter({describe(self.fn)})"

    def build(self, ctx: Context) -> OperatorLogic:
        return _FilterLogic(self.fn)


@dataclass(frozen=True, repr=False)
class FlatMap(Operator):
    """Replace each record with the records of the iterable ``fn(record)`` (maybe none)."""

    fn: Callable[[Any], Iterable[Any]]
    output_type: Any = None

    def __post_init__(self) -> None:
        check_function(self.fn, "FlatMap fn")

    def __repr__(self) -> str:
        return f"FlatMap({describe(self.fn)})"

    def build(self, ctx: Context) -> OperatorLogic:
        return _FlatMapLogic(self.fn)


class _MapLogic(OperatorLogic):
    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self._fn = fn

    def process(self, batch: Batch) -> Batch:
        return list(map(self._fn, batch))


class _FilterLogic(OperatorLogic):
    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self._fn = fn

    def process(self, batch: Batch) -> Batch:
        return list(filter(self._fn, batch))


class _FlatMapLogic(OperatorLogic):
    def __init__(self, fn: Callable[[Any], Iterable[Any]]) -> None:
        self._fn = fn

    def process(self, batch: Batch) -> Batch:
        fn = self._fn
        return [out for record in batch for out in fn(record)]
