"""DAG validation: every check runs before any process starts, and every message names the
node (or edge) and says how to fix it."""

from __future__ import annotations

import os
from collections import Counter
from typing import TYPE_CHECKING

from engine.errors import DagError
from engine.operator import Operator, Sink, Source
from partitioning import KeyHash

if TYPE_CHECKING:
    from engine.dag import Dag

_KIND_BASES = {"source": Source, "operator": Operator, "sink": Sink}
# A worker process per replica, and a ring per pair of replicas on an all-to-all edge: past
# this many processes a job is a typo (parallelism=10000), not a plan for one machine.
MAX_WORKERS = 1024


def validate(dag: Dag) -> None:
    from engine.dag import MAIN, OPERATOR, SINK, SOURCE, check_pickles
    from engine.plan import record_type

    if not dag.nodes:
        raise DagError(f"DAG {dag.name!r} has no nodes: add a source with dag.source(...)")
    for node in dag.nodes:
        if not isinstance(node.name, str) or not node.name:
            raise DagError(
                f"DAG {dag.name!r}: node names must be non-empty strings, got {node.name!r}"
            )
        if node.kind not in _KIND_BASES:
            raise DagError(
                f"node {node.name!r}: unknown kind {node.kind!r}; add nodes with dag.source, "
                "stream.apply, stream.sink or dag.operator"
            )
    counts = Counter(n.name for n in dag.nodes)
    for name, n in counts.items():
        if n > 1:
            raise DagError(
                f"DAG {dag.name!r}: node name {name!r} is used {n} times; give each node a "
                "unique name"
            )
    names = set(counts)
    for node in dag.nodes:
        if not isinstance(node.parallelism, int) or node.parallelism < 1:
            raise DagError(
                f"node {node.name!r}: parallelism must be an integer >= 1, got {node.parallelism!r}"
            )
        base = _KIND_BASES[node.kind]
        if not isinstance(node.config, base):
            raise DagError(
                f"node {node.name!r}: a {node.kind} needs a {base.__module__}.{base.__name__} "
                f"config, got {type(node.config).__name__}"
            )
        limit = getattr(node.config, "max_parallelism", None)
        if limit is not None and node.parallelism > limit:
            raise DagError(
                f"node {node.name!r}: {type(node.config).__name__} supports at most "
                f"{limit} replica(s), got parallelism={node.parallelism}; lower it"
            )
    workers = sum(n.parallelism for n in dag.nodes)
    if workers > MAX_WORKERS:
        widest = max(dag.nodes, key=lambda n: n.parallelism)
        raise DagError(
            f"DAG {dag.name!r} would start {workers} worker processes (node {widest.name!r} "
            f"has parallelism {widest.parallelism}); at most {MAX_WORKERS}, one process per "
            "replica: give nodes about as many replicas as the machine has cores"
        )
    for edge in dag.edges:
        for end in (edge.upstream, edge.downstream):
            if end not in names:
                raise DagError(
                    f"edge {edge.upstream!r} -> {edge.downstream!r}: unknown node {end!r}; "
                    f"known nodes: {sorted(names)}"
                )
    twice = Counter((e.upstream, e.downstream, e.output) for e in dag.edges)
    for (start, end, output), n in twice.items():
        if n > 1:
            raise DagError(
                f"edge {start!r} -> {end!r} (output {output!r}) is declared {n} times, so each "
                f"record would reach {end!r} {n} times; declare it once"
            )
    for node in dag.nodes:
        ins, outs = dag.inputs(node.name), dag.outputs(node.name)
        if node.kind == SOURCE and ins:
            raise DagError(
                f"source {node.name!r} has inputs from {[e.upstream for e in ins]}; sources "
                "read from outside the DAG: make it an operator, or remove the edges"
            )
        if node.kind == SINK and outs:
            raise DagError(
                f"sink {node.name!r} has outputs to {[e.downstream for e in outs]}; sinks end "
                "the DAG: use an operator to pass records on"
            )
        if node.kind == OPERATOR and not any(e.output == MAIN for e in outs):
            raise DagError(
                f"operator {node.name!r} has no downstream node, so its output would be lost: "
                "add a sink with .sink(...)"
            )
        if node.kind == SOURCE and not outs:
            raise DagError(f"source {node.name!r} feeds nothing: connect it to an operator or sink")
        for edge in outs:
            if edge.output == MAIN:
                continue
            declared = getattr(node.config, "side_outputs", ())
            if edge.output not in declared:
                raise DagError(
                    f"node {node.name!r} has no side output {edge.output!r} (it declares "
                    f"{list(declared)}); use one of those names"
                )
    _check_cycles(dag)
    _check_reachable(dag)
    for edge in dag.edges:
        where = f"edge {edge.upstream!r} -> {edge.downstream!r}"
        part = dag.partitioner(edge)
        up, down = dag.node(edge.upstream), dag.node(edge.downstream)
        if isinstance(part, KeyHash) and not part.key:
            raise DagError(f"{where}: key_by needs a key, e.g. key_by('symbol')")
        sent, taken = record_type(up, edge.output), getattr(down.config, "input_type", None)
        if sent is not None and taken is not None and sent is not taken:
            raise DagError(
                f"{where}: {edge.upstream!r} sends {sent.__name__} records, but "
                f"{type(down.config).__name__} {edge.downstream!r} takes {taken.__name__} "
                f"(input_type); give it input_type={sent.__name__} or connect it to a "
                f"stream of {taken.__name__}"
            )
        fields = getattr(sent, "__struct_fields__", None)
        if (
            isinstance(part, KeyHash)
            and isinstance(part.key, str)
            and fields is not None
            and part.key.partition(".")[0] not in fields
        ):
            kind = sent.__name__
            raise DagError(
                f"{where}: key_by({part.key!r}), but {kind} records have no field "
                f"{part.key.partition('.')[0]!r}; key by one of {list(fields)}"
            )
        if not part.all_to_all and up.parallelism != down.parallelism:
            raise DagError(
                f"{where}: a forward edge needs equal parallelism, got {up.parallelism} and "
                f"{down.parallelism}; use .rebalance() or .key_by(...) instead"
            )
        try:
            part.build(down.parallelism, 0)
        except DagError as exc:
            raise DagError(f"{where}: {exc}") from None
        check_pickles(f"{where}: partitioner {part.describe()}", part)
    _check_files(dag)
    for node in dag.nodes:
        check_pickles(f"node {node.name!r}: its {type(node.config).__name__} config", node.config)


def _check_files(dag: Dag) -> None:
    """Inputs exist; no two writers, nor a writer and a reader, share a path (see
    ``engine.operator.Files``). Paths are compared resolved, links followed."""
    readers: dict[str, str] = {}
    writers: dict[str, str] = {}
    for node in dag.nodes:
        files = node.config.files(node.parallelism) if hasattr(node.config, "files") else None
        if files is None:
            continue
        for path in files.reads:
            if not os.path.isfile(path):
                what = "is a folder" if os.path.isdir(path) else "does not exist"
                raise DagError(f"node {node.name!r} reads {path!r}, which {what}; give a file")
            readers.setdefault(os.path.realpath(path), node.name)
        for path in files.writes:
            real = os.path.realpath(path)
            if os.path.isdir(real):
                raise DagError(
                    f"node {node.name!r} writes {path!r}, which is a folder; give a file"
                )
            if not os.path.isdir(os.path.dirname(real)):
                raise DagError(
                    f"node {node.name!r} writes {path!r}, but its folder does not exist; create it"
                )
            other = writers.setdefault(real, node.name)
            if other != node.name or real in readers:
                clash = (
                    f"node {other!r} writes it too"
                    if other != node.name
                    else f"node {readers[real]!r} reads it"
                )
                raise DagError(
                    f"node {node.name!r} writes {path!r}, and {clash}: one would replace the "
                    "other's file; give each node its own path"
                )


def check_ints(config: object, names: str, *, optional: str = "") -> None:
    """Raise ``DagError`` naming ``config`` unless each field in ``names`` is an int (not a
    bool) and each in ``optional`` an int or None (space-separated names). For a config's
    ``__post_init__``, before it compares the values."""
    maybe = optional.split()
    wrong = []
    for name in [*names.split(), *maybe]:
        value = getattr(config, name)
        if type(value) is not int and not (value is None and name in maybe):
            kind = "an integer or None" if name in maybe else "an integer"
            wrong.append(f"{name} must be {kind}, got {value!r}")
    if wrong:
        raise DagError(f"invalid {type(config).__name__} config: {'; '.join(wrong)}")


def _check_cycles(dag: Dag) -> None:
    state: dict[str, int] = {}  # 1 on the current path, 2 finished
    path: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        path.append(name)
        for edge in dag.outputs(name):
            nxt = edge.downstream
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt]
                raise DagError(
                    f"DAG {dag.name!r} has a cycle: {' -> '.join(cycle)}; remove one of these edges"
                )
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[name] = 2

    for node in dag.nodes:
        if node.name not in state:
            visit(node.name)


def _check_reachable(dag: Dag) -> None:
    from engine.dag import SOURCE

    seen = {n.name for n in dag.nodes if n.kind == SOURCE}
    frontier = list(seen)
    while frontier:
        name = frontier.pop()
        for edge in dag.outputs(name):
            if edge.downstream not in seen:
                seen.add(edge.downstream)
                frontier.append(edge.downstream)
    for node in dag.nodes:
        if node.name not in seen:
            raise DagError(
                f"node {node.name!r} is not reachable from any source: connect an input to it "
                "or remove it"
            )
