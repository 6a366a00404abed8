"""DAG validation: every malformed DAG is refused before anything starts, naming the node
and the fix."""

from __future__ import annotations

import pytest
from jobs import Collect, Explode, Numbered, RunningSum

from engine import Dag, DagError
from engine.dag import OPERATOR


def _valid() -> Dag:
    dag = Dag("t")
    src = dag.source("src", Numbered(10), parallelism=2)
    summed = src.key_by(_key).apply("sum", RunningSum(), parallelism=3)
    summed.sink("out", Collect())
    return dag


def _key(record):
    return record[0]


def test_valid_dag_passes_and_orders_topologically():
    dag = _valid()
    dag.validate()
    assert [n.name for n in dag.topological()] == ["src", "sum", "out"]


def _refused(dag: Dag, *fragments: str) -> str:
    with pytest.raises(DagError) as info:
        dag.validate()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_cycle_is_named():
    dag = Dag("t")
    dag.source("src", Numbered(1)).apply("a", RunningSum()).apply("b", RunningSum()).sink(
        "out", Collect()
    )
    dag.connect("b", "a")
    _refused(dag, "cycle", "a -> b -> a")


def test_duplicate_and_unknown_names():
    dag = _valid()
    dag.source("src", Numbered(1)).sink("out2", Collect())
    _refused(dag, "'src'", "used 2 times", "unique name")
    dag = _valid()
    dag.connect("sum", "nowhere")
    _refused(dag, "unknown node 'nowhere'")


def test_source_with_input_and_sink_with_output():
    dag = _valid()
    dag.connect("sum", "src")
    _refused(dag, "source 'src' has inputs")
    dag = _valid()
    dag.add("after", OPERATOR, RunningSum())
    dag.connect("out", "after")
    _refused(dag, "sink 'out' has outputs")


def test_unreachable_node():
    dag = _valid()
    dag.operator("orphan", RunningSum()).sink("orphan_out", Collect())
    _refused(dag, "'orphan' is not reachable from any source")


def test_parallelism_below_one():
    dag = Dag("t")
    dag.source("src", Numbered(1), parallelism=0).sink("out", Collect())
    _refused(dag, "node 'src'", "parallelism must be an integer >= 1")


def test_keyed_edge_without_key():
    dag = Dag("t")
    with pytest.raises(DagError, match=r"key_by on the output of node 'src'.*name the attribute"):
        dag.source("src", Numbered(1)).key_by("")


def test_unpicklable_operator_is_named():
    dag = Dag("t")
    src = dag.source("src", Numbered(1))
    src.key_by(lambda r: r[0]).apply("sum", RunningSum()).sink("o", Collect())
    _refused(dag, "'src' -> 'sum'", "cannot be pickled", "module-level")
    dag = Dag("t")
    dag.source("src", Numbered(1)).map("m", lambda r: r).sink("o", Collect())
    _refused(dag, "node 'm'", "cannot be pickled")


def test_operator_without_downstream_and_unknown_side_output():
    dag = Dag("t")
    dag.source("src", Numbered(1)).apply("dangling", Explode(after=10))
    _refused(dag, "operator 'dangling' has no downstream", "add a sink")
    dag = _valid()
    dag.connect(dag.source("s2", Numbered(1)).side("late"), "out")
    _refused(dag, "node 's2' has no side output 'late'")


def test_forward_edge_needs_equal_parallelism():
    dag = Dag("t")
    dag.source("src", Numbered(1), parallelism=2).forward().apply("sum", RunningSum(), 3).sink(
        "o", Collect(), 3
    )
    _refused(dag, "'src' -> 'sum'", "forward edge needs equal parallelism", ".rebalance()")


def test_wrong_config_type():
    dag = Dag("t")
    dag.source("src", RunningSum()).sink("o", Collect())  # type: ignore[arg-type]
    _refused(dag, "node 'src'", "a source needs")
