"""From a validated DAG to its physical wiring: one link (channel) per pair of replicas that
exchange records, and for each replica its ordered inputs and its outputs per edge.

Shared by the coordinator (which creates a channel per link) and the inline runner (which
calls the downstream task directly), so both wire a DAG the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.dag import MAIN, Dag, Edge, Node
from engine.operator import hook


@dataclass(frozen=True)
class Link:
    """One channel: records of ``edge`` from ``up`` replica ``up_replica`` to ``down``'s
    replica ``down_replica``. ``index`` is the link's position in ``Plan.links``."""

    index: int
    edge: int
    up: str
    up_replica: int
    down: str
    down_replica: int
    record_type: Any


@dataclass(frozen=True)
class Plan:
    dag: Dag
    links: list[Link]

    @property
    def replicas(self) -> list[tuple[Node, int]]:
        """Every (node, replica) in topological order: the workers of the job."""
        return [(n, r) for n in self.dag.topological() for r in range(n.parallelism)]

    def inputs(self, node: str, replica: int) -> list[Link]:
        return [k for k in self.links if k.down == node and k.down_replica == replica]

    def outputs(self, node: str, replica: int) -> list[tuple[Edge, list[Link]]]:
        """Each outgoing edge of the replica with the links it feeds."""
        result = []
        for i, edge in enumerate(self.dag.edges):
            if edge.upstream == node:
                links = [k for k in self.links if k.edge == i and k.up_replica == replica]
                result.append((edge, links))
        return result


def record_type(
    dag: Dag, node: Node, output: str, known: dict[tuple[str, str], Any] | None = None
) -> Any:
    """The record type of ``node``'s ``output`` (None: not known; records go pickled).
    An output of the input records themselves (``Operator.passes_input``) whose type is
    not named has its inputs' type, when every input edge has the same one. ``known``
    keeps the types found, by (node, output), for a caller asking of every edge."""
    if known is not None and (node.name, output) in known:
        return known[node.name, output]
    config = node.config
    if output == MAIN:
        found = getattr(config, "output_type", None)
    else:
        found = getattr(config, "side_types", {}).get(output)
    if found is None and hook(config, "passes_input", output):
        inputs = {
            record_type(dag, dag.node(e.upstream), e.output, known) for e in dag.inputs(node.name)
        }
        found = inputs.pop() if len(inputs) == 1 else None
    if known is not None:
        known[node.name, output] = found
    return found


def plan(dag: Dag) -> Plan:
    links: list[Link] = []
    known: dict[tuple[str, str], Any] = {}
    for i, edge in enumerate(dag.edges):
        up, down = dag.node(edge.upstream), dag.node(edge.downstream)
        rtype = record_type(dag, up, edge.output, known)
        if dag.partitioner(edge).all_to_all:
            pairs = [(a, b) for a in range(up.parallelism) for b in range(down.parallelism)]
        else:
            pairs = [(a, a) for a in range(up.parallelism)]
        for a, b in pairs:
            links.append(Link(len(links), i, up.name, a, down.name, b, rtype))
    return Plan(dag, links)
