"""``from_spec``: what the DAG API accepts where an edge's partitioner goes."""

from __future__ import annotations

from partitioning._errors import dag_error
from partitioning.base import Partitioner
from partitioning.simple import Broadcast, Forward, Rebalance

_NAMED: dict[str, type[Partitioner]] = {
    "forward": Forward,
    "rebalance": Rebalance,
    "broadcast": Broadcast,
}


def from_spec(spec: Partitioner | str) -> Partitioner:
    """A Partitioner from a Partitioner (returned as it is) or one of the names
    ``"forward"``, ``"rebalance"``, ``"broadcast"``; DagError otherwise."""
    if isinstance(spec, Partitioner):
        return spec
    valid = ", ".join(repr(name) for name in _NAMED)
    if isinstance(spec, str):
        factory = _NAMED.get(spec)
        if factory is not None:
            return factory()
        raise dag_error(
            f"unknown partitioner {spec!r}; valid names: {valid}. A keyed edge needs its "
            f"key: pass KeyHash('symbol') (or use key_by('symbol'))"
        )
    if isinstance(spec, type) and issubclass(spec, Partitioner):
        raise dag_error(
            f"partitioner {spec.__name__} is a class; pass an instance, e.g. {spec.__name__}()"
        )
    raise dag_error(
        f"a partitioner must be a Partitioner (Forward(), Rebalance(), Broadcast(), "
        f"KeyHash('symbol')) or one of the names {valid}; got {spec!r} "
        f"({type(spec).__name__})"
    )
