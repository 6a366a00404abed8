"""DAG validation: every check runs before any process starts, and every message names the
node (or edge) and says how to fix it."""

from __future__ import annotations

import dataclasses
import operator
import os
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from engine.errors import DagError
from engine.operator import (
    ANY_KEY,
    ONE_STATE,
    STATELESS,
    Files,
    Operator,
    Sink,
    Source,
    hook,
    side_outputs,
)
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
        problem = hook(node.config, "parallelism_problem", node.parallelism)
        if problem:
            raise DagError(f"node {node.name!r}: {problem}")
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
        declared = side_outputs(node.config)
        if node.kind == SINK and declared:
            raise DagError(
                f"sink {node.name!r} declares side outputs {list(declared)}; "
                "sinks end the DAG: write such records yourself, or route them with an "
                "operator before the sink"
            )
        if node.kind == OPERATOR and not any(e.output == MAIN for e in outs):
            raise DagError(
                f"operator {node.name!r} has no downstream node, so its output would be lost: "
                "add a sink with .sink(...)"
            )
        if node.kind == SOURCE and not outs:
            raise DagError(f"source {node.name!r} feeds nothing: connect it to an operator or sink")
        for edge in outs:
            if edge.output != MAIN and edge.output not in declared:
                raise DagError(
                    f"node {node.name!r} has no side output {edge.output!r} (it declares "
                    f"{list(declared)}); use one of those names"
                )
    _check_cycles(dag)
    _check_reachable(dag)
    known: dict[tuple[str, str], Any] = {}  # record types by (node, output)
    for edge in dag.edges:
        where = f"edge {edge.upstream!r} -> {edge.downstream!r}"
        part = dag.partitioner(edge)
        up, down = dag.node(edge.upstream), dag.node(edge.downstream)
        if isinstance(part, KeyHash) and not part.key:
            raise DagError(f"{where}: key_by needs a key, e.g. key_by('symbol')")
        _check_fields(where, record_type(dag, up, edge.output, known), part, down)
        _check_state_key(dag, edge, down)
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
    _check_side_outputs(dag)
    _check_files(dag)
    for node in dag.nodes:
        check_pickles(f"node {node.name!r}: its {type(node.config).__name__} config", node.config)


def _check_side_outputs(dag: Dag) -> None:
    """Every side output a node declares has a consumer: its records would be lost."""
    for node in dag.nodes:
        consumed = {edge.output for edge in dag.outputs(node.name)}
        for side in side_outputs(node.config):
            if side not in consumed:
                instead = hook(node.config, "without_side", side)
                raise DagError(
                    f"node {node.name!r} sends records to its side output {side!r}, which "
                    f"nothing consumes, so they would be lost: add .side({side!r}).sink(...)"
                    + (f", or {instead}" if instead else "")
                )


def key_fields(key: Any) -> tuple[str, ...]:
    """The record fields a key reads: its names (the first part of a dotted path); none for
    a function, None or a marker."""
    names = (key,) if isinstance(key, str) else key if isinstance(key, tuple) else ()
    return tuple(name.partition(".")[0] for name in names)


def _field_names(record_type: Any) -> tuple[str, ...] | None:
    """The fields of a msgspec Struct, a dataclass or a named tuple; None for another type,
    whose fields cannot be known before a record exists."""
    if record_type is None:
        return None
    if hasattr(record_type, "__struct_fields__"):
        return tuple(record_type.__struct_fields__)
    if dataclasses.is_dataclass(record_type):
        return tuple(f.name for f in dataclasses.fields(record_type))
    fields = getattr(record_type, "_fields", None)
    return tuple(fields) if isinstance(fields, tuple) else None


def _check_fields(where: str, sent: Any, part: Any, down: Any) -> None:
    """The key_by field and the fields the downstream node reads exist on ``sent`` records
    (a field, or any attribute of the class: a property say), when their fields are known."""
    fields = _field_names(sent)
    if fields is None:
        return

    def lacks(name: str) -> bool:
        return name not in fields and not hasattr(sent, name)

    if isinstance(part, KeyHash) and isinstance(part.key, str):
        field = part.key.partition(".")[0]
        if lacks(field):
            raise DagError(
                f"{where}: key_by({part.key!r}), but {sent.__name__} records have no field "
                f"{field!r}; key by one of {list(fields)}"
            )
    missing = [f for f in hook(down.config, "fields_read") or () if lacks(f)]
    if missing:
        raise DagError(
            f"{where}: {type(down.config).__name__} {down.name!r} reads "
            f"{', '.join(map(repr, missing))}, which {sent.__name__} records lack; connect it "
            "to records that have them, or configure it for these records' fields"
        )


def _check_state_key(dag: Dag, edge: Any, down: Any) -> None:
    """A node of several replicas that keeps state per key gets every record of a key on one
    replica: its input is a key_by on fields of that key (see ``Operator.state_key``), or a
    forward edge from a node whose own inputs are such key_bys (a forward edge keeps each
    record on its replica's number, so the keys stay where the key_by put them)."""
    key = hook(down.config, "state_key") if down.parallelism > 1 else None
    if key is None or key is STATELESS:
        return
    kind, n = type(down.config).__name__, down.parallelism
    if key is ONE_STATE:
        raise DagError(
            f"node {down.name!r}: {kind} keeps one state over all records, so it cannot run "
            f"{n} replicas; give it parallelism=1 (or a key)"
        )
    ours = set(key_fields(key))
    if not all(_keeps_keys_together(dag, edge, ours, set())):
        where = f"edge {edge.upstream!r} -> {edge.downstream!r}"
        per = "each whole record" if key is ANY_KEY else f"key {key!r}"
        field = sorted(ours)[0] if ours else "symbol"
        raise DagError(
            f"{where}: {kind} {down.name!r} keeps its state per {per} in each of its {n} "
            f"replicas, so all records of a key must reach one replica: make this edge "
            f"key_by({field!r}) (fields of its key), or give the node parallelism=1"
        )


def _keeps_keys_together(dag: Dag, edge: Any, ours: set[str], seen: set[str]) -> Iterator[bool]:
    """For each edge that decides where ``edge``'s records go: whether it is a key_by on
    fields of the key (any key_by when the key has no fields: a function, a whole record).
    Forward edges are followed upstream; a source's forward edge decides, and fails."""
    part = dag.partitioner(edge)
    if isinstance(part, KeyHash):
        theirs = set(key_fields(part.key))
        yield not (ours and theirs and not theirs <= ours)
    elif part.all_to_all or edge.upstream in seen or not dag.inputs(edge.upstream):
        yield False  # rebalance, broadcast, or straight from a source
    else:
        seen.add(edge.upstream)
        for before in dag.inputs(edge.upstream):
            yield from _keeps_keys_together(dag, before, ours, seen)


def _declared(dag: Dag) -> list[tuple[str, Files]]:
    """Each node's name and ``declared_files``."""
    declared = [(n.name, hook(n.config, "declared_files", n.parallelism)) for n in dag.nodes]
    return [(name, files) for name, files in declared if files]


def declared_writes(dag: Dag) -> list[str]:
    """Every path the nodes of ``dag`` declare they write (``declared_files``)."""
    return [path for _, files in _declared(dag) for path in files.writes]


def _check_files(dag: Dag) -> None:
    """Inputs exist; no two writers, nor a writer and a reader, share a path (see
    ``engine.operator.Files``). Reads are compared with links followed; writes by their
    folder resolved (a rename replaces a link, not what it points to)."""
    declared = _declared(dag)
    readers: dict[str, str] = {}
    for name, files in declared:
        for path in files.reads:
            if not os.path.isfile(path):
                what = "is a folder" if os.path.isdir(path) else "does not exist"
                raise DagError(f"node {name!r} reads {path!r}, which {what}; give a file")
            readers.setdefault(os.path.realpath(path), name)
    writers: dict[str, str] = {}
    for name, files in declared:
        for path in files.writes:
            folder, base = os.path.split(os.path.abspath(path))
            target = os.path.join(os.path.realpath(folder), base)
            if os.path.isdir(target):
                raise DagError(f"node {name!r} writes {path!r}, which is a folder; give a file")
            if not os.path.isdir(folder):
                raise DagError(
                    f"node {name!r} writes {path!r}, but its folder does not exist; create it"
                )
            other = writers.setdefault(target, name)
            if target in readers:
                clash = f"node {readers[target]!r} reads it"
            elif other != name:
                clash = f"node {other!r} writes it too"
            else:
                continue
            raise DagError(
                f"node {name!r} writes {path!r}, and {clash}: one would replace the "
                "other's file; give each node its own path"
            )


def is_number(value: Any, *, integer: bool = False) -> bool:
    """A real number (an int with ``integer``), and not a bool."""
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    return isinstance(value, kinds) and not isinstance(value, bool)


def check_ints(config: object, names: str, *, optional: str = "") -> None:
    """Raise ``DagError`` naming ``config`` unless each field in ``names`` is an int (not a
    bool; an int subclass or anything with ``__index__``, numpy's say, is one) and each in
    ``optional`` an int or None (space-separated names). For a config's ``__post_init__``,
    before it compares the values."""
    maybe = optional.split()
    wrong = []
    for name in [*names.split(), *maybe]:
        value = getattr(config, name)
        if value is None and name in maybe:
            continue
        if isinstance(value, bool) or not hasattr(type(value), "__index__"):
            kind = "an integer or None" if name in maybe else "an integer"
            wrong.append(f"{name} must be {kind}, got {value!r}")
        elif type(value) is not int:
            object.__setattr__(config, name, operator.index(value))  # a plain int from here
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
