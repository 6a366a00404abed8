"""The partitioner contract: a frozen config that builds a live splitter per upstream replica.

A ``Partitioner`` describes how an edge spreads records over the downstream replicas. It is
part of the DAG description, so it is small, frozen and picklable; the engine ships it to
every upstream worker and calls ``build(parallelism, upstream_replica)`` there, once per
(edge, upstream replica), to get a ``Splitter``. The splitter is the live object: it may hold
caches and counters and is used by one thread of one process only.

``Splitter.split(batch)`` groups one output batch into ``(downstream replica, records)``
pairs, one per non-empty group, with the records of a group in batch order. Groups come in no
guaranteed order. A splitter may hand back the input list itself (forward, broadcast) or
lists it shares between groups (broadcast), so neither the caller nor the consumers of the
groups may mutate them.

A splitter that sets ``accepts_columns = True`` also gets ``engine.columns.Columns``
batches and returns Columns groups (the four built-in ones do); any other splitter gets
lists of records, built by the engine.

Watermarks, EOF (and later barriers) are not the partitioner's business: the engine sends
them to every downstream replica.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from partitioning._errors import dag_error

DEFAULT_MAX_PARALLELISM = 128
"""Key groups of a keyed edge unless told otherwise: the most replicas it can ever feed."""


class Splitter(ABC):
    """Live, per upstream replica: groups a batch into per-downstream-replica batches."""

    __slots__ = ()
    accepts_columns: ClassVar[bool] = False  # see the module docstring

    @abstractmethod
    def split(self, batch: list[Any]) -> list[tuple[int, list[Any]]]:
        """Group ``batch`` into ``(replica, records)`` for the non-empty groups.

        Every record appears in exactly one group (in every group for broadcast), in the
        order it had in ``batch``. An empty batch gives an empty list.
        """


class Partitioner(ABC):
    """Config of an edge's partitioning: frozen, picklable, cheap; ``build`` makes the
    live splitter inside the upstream worker.

    ``all_to_all`` is False only for one-to-one edges (forward), where upstream replica i
    feeds downstream replica i alone; the engine then wires M channels instead of M*N.
    """

    all_to_all: ClassVar[bool] = True

    @abstractmethod
    def build(self, parallelism: int, upstream_replica: int) -> Splitter:
        """The splitter for upstream replica ``upstream_replica`` of an edge whose
        downstream node has ``parallelism`` replicas. Raises DagError when the two do not
        fit this partitioner."""

    @abstractmethod
    def describe(self) -> str:
        """A short readable name for messages and the CLI, e.g. ``key_hash(symbol)``."""


def check_parallelism(
    parallelism: int,
    upstream_replica: int = 0,
    *,
    max_parallelism: int | None = None,
    what: str = "partitioner",
) -> None:
    """Raise DagError unless ``parallelism`` and ``upstream_replica`` can be built.

    ``parallelism`` must be an int in [1, max_parallelism] (no upper bound when
    ``max_parallelism`` is None); ``upstream_replica`` an int >= 0. ``what`` names the
    partitioner in the message (its ``describe()``).
    """
    # bool is an int to Python, but True replicas is a bug, not a parallelism of 1
    if isinstance(parallelism, bool) or not isinstance(parallelism, int) or parallelism < 1:
        raise dag_error(f"{what}: downstream parallelism must be an int >= 1, got {parallelism!r}")
    if max_parallelism is not None and parallelism > max_parallelism:
        suggestion = 1 << (parallelism - 1).bit_length()
        raise dag_error(
            f"{what}: downstream parallelism {parallelism} is more than max_parallelism "
            f"{max_parallelism} (the number of key groups, so the most replicas a keyed edge "
            f"can feed); raise max_parallelism, e.g. KeyHash(..., max_parallelism={suggestion}) "
            f"or key_by(..., max_parallelism={suggestion}), or lower the parallelism "
            f"(changing max_parallelism moves keys between key groups)"
        )
    if (
        isinstance(upstream_replica, bool)
        or not isinstance(upstream_replica, int)
        or upstream_replica < 0
    ):
        raise dag_error(f"{what}: upstream replica must be an int >= 0, got {upstream_replica!r}")
