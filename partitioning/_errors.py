"""Build engine.errors exceptions without importing the engine when partitioning is imported.

``engine/__init__`` imports ``engine.dag``, which imports ``partitioning``. Were partitioning
to import ``engine.errors`` at module level, ``import partitioning`` before ``import engine``
would be a circular import (``engine/__init__`` would run while ``partitioning`` is half
built). So partitioning looks the exception classes up when it raises, which is a cold path,
and the one exception tree stays in engine/errors.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.errors import DagError, RecordError


def dag_error(message: str) -> DagError:
    from engine.errors import DagError

    return DagError(message)


def record_error(message: str) -> RecordError:
    from engine.errors import RecordError

    return RecordError(message)
