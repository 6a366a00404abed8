"""Partitioners: how an edge spreads an upstream replica's batches over downstream replicas.

``Forward`` (replica i to replica i), ``Rebalance`` (round robin a batch at a time),
``Broadcast`` (everything to everyone) and ``KeyHash`` (equal keys to the same replica,
by mmh3 over key groups, as Flink assigns them). Each is a frozen, picklable config whose
``build(parallelism, upstream_replica)`` returns the live ``Splitter`` for one upstream
replica; see ``partitioning.base`` for the contract.
"""

from partitioning.base import (
    DEFAULT_MAX_PARALLELISM,
    Partitioner,
    Splitter,
    check_parallelism,
)
from partitioning.keyhash import KeyHash, key_bytes, key_group, replica_for
from partitioning.simple import Broadcast, Forward, Rebalance
from partitioning.spec import from_spec

__all__ = [
    "DEFAULT_MAX_PARALLELISM",
    "Broadcast",
    "Forward",
    "KeyHash",
    "Partitioner",
    "Rebalance",
    "Splitter",
    "check_parallelism",
    "from_spec",
    "key_bytes",
    "key_group",
    "replica_for",
]
