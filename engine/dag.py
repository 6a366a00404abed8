"""Describing a job: a DAG of sources, operators and sinks, and its validation.

A job reads in a few lines::

    dag = Dag("bars")
    ticks = dag.source("ticks", Generator(count=1_000_000), parallelism=2)
    bars = ticks.key_by("symbol").apply("bars", WindowAggregate(Tumbling("1s"), OHLCV()), 3)
    bars.sink("out", CsvBars("bars.csv"))
    bars.side("late").sink("late", CsvTicksSink("late.csv"))

Each node has a name, a config (see ``engine.operator``) and a parallelism (replicas). Each
edge carries one output of its upstream node (``"main"`` or a named side output) to a
downstream node through a partitioner. An edge with no partitioner given is ``forward``
when both ends have the same parallelism and ``rebalance`` otherwise.

``Dag.validate()`` refuses a malformed DAG before anything starts, naming the node and the
fix; ``engine.launch`` and the inline runner call it first.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.errors import DagError
from engine.operator import Operator, Sink, Source
from partitioning import Forward, KeyHash, Partitioner, Rebalance, from_spec

MAIN = "main"
SOURCE, OPERATOR, SINK = "source", "operator", "sink"


@dataclass(frozen=True)
class Node:
    name: str
    kind: str
    config: Any
    parallelism: int


@dataclass(frozen=True)
class Edge:
    upstream: str
    downstream: str
    output: str = MAIN
    partitioner: Partitioner | None = None


class Stream:
    """The records of one output of a node, ready to be partitioned and consumed."""

    def __init__(
        self, dag: Dag, node: str, output: str = MAIN, partitioner: Partitioner | None = None
    ) -> None:
        self.dag = dag
        self.node = node
        self.output = output
        self.partitioner = partitioner

    def side(self, output: str) -> Stream:
        """The node's side output ``output`` (for example ``"late"``)."""
        return Stream(self.dag, self.node, output)

    def partition(self, partitioner: Partitioner | str) -> Stream:
        return Stream(self.dag, self.node, self.output, from_spec(partitioner))

    def key_by(self, key: str | Callable[[Any], Any], *, max_parallelism: int = 128) -> Stream:
        """Hash-partition on ``key`` (an attribute name or a picklable function)."""
        try:
            partitioner = KeyHash(key, max_parallelism)
        except DagError as exc:
            raise DagError(f"key_by on the output of node {self.node!r}: {exc}") from None
        return Stream(self.dag, self.node, self.output, partitioner)

    def rebalance(self) -> Stream:
        return self.partition("rebalance")

    def broadcast(self) -> Stream:
        return self.partition("broadcast")

    def forward(self) -> Stream:
        return self.partition("forward")

    def apply(self, name: str, operator: Operator, parallelism: int = 1) -> Stream:
        """Feed this stream into a new operator node; returns its main output."""
        self.dag.add(name, OPERATOR, operator, parallelism)
        self.dag.connect(self, name)
        return Stream(self.dag, name)

    def sink(self, name: str, sink: Sink, parallelism: int = 1) -> None:
        self.dag.add(name, SINK, sink, parallelism)
        self.dag.connect(self, name)

    def map(self, name: str, fn: Callable[[Any], Any], parallelism: int = 1) -> Stream:
        from operators import Map

        return self.apply(name, Map(fn), parallelism)

    def filter(self, name: str, fn: Callable[[Any], bool], parallelism: int = 1) -> Stream:
        from operators import Filter

        return self.apply(name, Filter(fn), parallelism)

    def to(self, node: str) -> None:
        """Feed this stream into an existing node (a second input, for example)."""
        self.dag.connect(self, node)


class Dag:
    def __init__(self, name: str) -> None:
        self.name = name
        self.nodes: list[Node] = []
        self.edges: list[Edge] = []

    def add(self, name: str, kind: str, config: Any, parallelism: int = 1) -> None:
        self.nodes.append(Node(name, kind, config, parallelism))

    def source(self, name: str, source: Source, parallelism: int = 1) -> Stream:
        self.add(name, SOURCE, source, parallelism)
        return Stream(self, name)

    def operator(self, name: str, operator: Operator, parallelism: int = 1) -> Stream:
        """Add an operator with no input yet; connect inputs with ``stream.to(name)``."""
        self.add(name, OPERATOR, operator, parallelism)
        return Stream(self, name)

    def connect(self, stream: Stream | str, downstream: str) -> None:
        if isinstance(stream, str):
            stream = Stream(self, stream)
        self.edges.append(Edge(stream.node, downstream, stream.output, stream.partitioner))

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise DagError(f"DAG {self.name!r} has no node {name!r}")

    def inputs(self, name: str) -> list[Edge]:
        return [e for e in self.edges if e.downstream == name]

    def outputs(self, name: str) -> list[Edge]:
        return [e for e in self.edges if e.upstream == name]

    def partitioner(self, edge: Edge) -> Partitioner:
        """The edge's partitioner, with the default filled in."""
        if edge.partitioner is not None:
            return edge.partitioner
        up, down = self.node(edge.upstream), self.node(edge.downstream)
        return Forward() if up.parallelism == down.parallelism else Rebalance()

    def topological(self) -> list[Node]:
        """Nodes with every node after all of its inputs (the DAG must be valid)."""
        order: list[Node] = []
        placed: set[str] = set()
        pending = list(self.nodes)
        while pending:
            rest = []
            for node in pending:
                if all(e.upstream in placed for e in self.inputs(node.name)):
                    order.append(node)
                    placed.add(node.name)
                else:
                    rest.append(node)
            if len(rest) == len(pending):
                raise DagError(f"DAG {self.name!r} has a cycle")
            pending = rest
        return order

    def validate(self) -> None:
        """Raise ``DagError`` naming the first problem found and how to fix it."""
        from engine.validate import validate

        validate(self)

    def __repr__(self) -> str:
        return f"Dag({self.name!r}, nodes={[n.name for n in self.nodes]})"


def check_pickles(what: str, obj: Any) -> None:
    """Raise DagError if ``obj`` cannot travel to a worker process."""
    try:
        pickle.dumps(obj)
    except Exception as exc:
        raise DagError(
            f"{what} cannot be pickled, so it cannot be sent to a worker process: "
            f"{type(exc).__name__}: {exc}. Use module-level functions and classes "
            "(no lambdas, closures or open handles in configs)."
        ) from None
