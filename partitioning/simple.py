"""The partitioners that ignore what is in a record: forward, rebalance and broadcast.

All three work on whole batches: they cut or copy list references and never look at a
record, so their cost per batch does not grow with the number of records (rebalance slices,
which copies pointers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from partitioning._errors import dag_error
from partitioning.base import Partitioner, Splitter, check_parallelism


@dataclass(frozen=True)
class Forward(Partitioner):
    """One to one: upstream replica i feeds downstream replica i, and no other.

    The edge needs equal parallelism on both ends (the engine validates it); records keep
    their replica and their order, and nothing is copied.
    """

    all_to_all: ClassVar[bool] = False

    def build(self, parallelism: int, upstream_replica: int) -> Splitter:
        check_parallelism(parallelism, upstream_replica, what=self.describe())
        if upstream_replica >= parallelism:
            raise dag_error(
                f"forward: upstream replica {upstream_replica} has no downstream replica "
                f"{upstream_replica} (downstream parallelism {parallelism}); a forward edge "
                f"needs equal parallelism on both ends, use rebalance or key_hash otherwise"
            )
        return ForwardSplitter(upstream_replica)

    def describe(self) -> str:
        return "forward"


class ForwardSplitter(Splitter):
    __slots__ = ("_replica",)
    accepts_columns = True  # forwards, slices or shares a Columns batch

    def __init__(self, replica: int) -> None:
        self._replica = replica

    def split(self, batch: list[Any]) -> list[tuple[int, list[Any]]]:
        return [(self._replica, batch)] if batch else []


@dataclass(frozen=True)
class Rebalance(Partitioner):
    """Round robin, a batch at a time.

    Each batch is cut into ``parallelism`` contiguous chunks whose sizes differ by at most
    one; chunk k goes to replica ``(start + k) % parallelism``, and the next batch starts
    where this one ended (``start += len(batch)``). That hands out records exactly as
    per-record round robin would count them, so at every moment the totals sent to any two
    replicas differ by at most one, whatever the batch sizes: a batch of one record goes to
    the next replica in turn. Upstream replica u starts at replica ``u % parallelism`` so
    that upstream replicas do not all begin on replica 0.
    """

    def build(self, parallelism: int, upstream_replica: int) -> Splitter:
        check_parallelism(parallelism, upstream_replica, what=self.describe())
        return RebalanceSplitter(parallelism, upstream_replica % parallelism)

    def describe(self) -> str:
        return "rebalance"


class RebalanceSplitter(Splitter):
    __slots__ = ("_next", "_parallelism")
    accepts_columns = True  # forwards, slices or shares a Columns batch

    def __init__(self, parallelism: int, start: int) -> None:
        self._parallelism = parallelism
        self._next = start  # the replica that gets the next record

    def split(self, batch: list[Any]) -> list[tuple[int, list[Any]]]:
        size = len(batch)
        if not size:
            return []
        parallelism = self._parallelism
        start = self._next
        self._next = (start + size) % parallelism
        if parallelism == 1:
            return [(0, batch)]
        if size < parallelism:
            return [((start + i) % parallelism, [record]) for i, record in enumerate(batch)]
        chunk, longer = divmod(size, parallelism)  # the first `longer` chunks get one more
        groups = []
        low = 0
        for i in range(parallelism):
            high = low + chunk + (i < longer)
            groups.append(((start + i) % parallelism, batch[low:high]))
            low = high
        return groups


@dataclass(frozen=True)
class Broadcast(Partitioner):
    """Every downstream replica gets every record.

    All groups share the one input list: no copy is made, so consumers must treat the
    records and the list as read-only (the engine encodes each group; nothing mutates it).
    """

    def build(self, parallelism: int, upstream_replica: int) -> Splitter:
        check_parallelism(parallelism, upstream_replica, what=self.describe())
        return BroadcastSplitter(parallelism)

    def describe(self) -> str:
        return "broadcast"


class BroadcastSplitter(Splitter):
    __slots__ = ("_replicas",)
    accepts_columns = True  # forwards, slices or shares a Columns batch

    def __init__(self, parallelism: int) -> None:
        self._replicas = range(parallelism)

    def split(self, batch: list[Any]) -> list[tuple[int, list[Any]]]:
        return [(replica, batch) for replica in self._replicas] if batch else []
