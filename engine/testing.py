"""Run a DAG in this process, for tests and debugging: the same tasks, partitioners and
watermark rules as the worker processes, with channels replaced by direct calls.

``run_inline(dag)`` steps the source replicas in turn, one item each, and pushes each
batch depth-first through the DAG, so a run is deterministic. Its output equals a
multi-process run's whenever the result does not depend on how records and watermarks
from different upstream replicas interleave. With one source of one replica, per-key
results behind key-hash edges never do. With several source replicas (or a task fed by
several sources), which records are late does, even when each key comes from one
replica: a task's watermark is the minimum over its inputs, so a replica whose watermarks
arrive later keeps the others' records on time longer. The two runs then agree when no
record is late in any order (each source's lateness covers its disorder) or nothing keeps
time per key (a Map, a Filter). Records are handed on as they are, never encoded: one
that its edge's declared type cannot carry (a tuple where the type has a str) passes here
and fails across processes.
"""

from __future__ import annotations

import time
from typing import Any

from engine.columns import Columns
from engine.dag import SOURCE, Dag
from engine.operator import Context, side_outputs
from engine.plan import plan
from engine.result import JobResult, NodeReport
from engine.runtime_async import AsyncRunner
from engine.task import Emitter, Output, Sender, SourceTask, Task


class _Direct:
    """A sender that hands records straight to a downstream task's input."""

    def __init__(self, task: Task, index: int) -> None:
        self.task = task
        self.index = index

    def extend(self, records: list[Any] | Columns) -> None:
        if records:
            self.task.on_batch(records if type(records) is Columns else list(records))

    def send_watermark(self, ts: int) -> None:
        self.task.on_watermark(self.index, ts)

    def send_eof(self) -> None:
        self.task.on_eof(self.index)


def run_inline(dag: Dag, *, clock: Any = None) -> JobResult:
    """Validate and run ``dag`` to completion in this process."""
    dag.validate()
    started = time.perf_counter()
    wiring = plan(dag)
    runner = AsyncRunner()
    tasks: dict[tuple[str, int], Task | SourceTask] = {}
    contexts: dict[tuple[str, int], Context] = {}
    emitters: dict[tuple[str, int], Emitter] = {}
    # Build downstream first so every sender has its task to call.
    for node, replica in reversed(wiring.replicas):
        ctx = Context(node.name, replica, node.parallelism, side_outputs=side_outputs(node.config))
        if clock is not None:
            ctx.clock = clock
        outputs: dict[str, list[Output]] = {}
        for edge, links in wiring.outputs(node.name, replica):
            down = dag.node(edge.downstream)
            splitter = dag.partitioner(edge).build(down.parallelism, replica)
            senders: dict[int, Sender] = {}
            for link in links:
                target = tasks[(link.down, link.down_replica)]
                assert isinstance(target, Task)
                index = wiring.inputs(link.down, link.down_replica).index(link)
                senders[link.down_replica] = _Direct(target, index)
            outputs.setdefault(edge.output, []).append(Output(splitter, senders))
        emitter = Emitter(ctx, outputs)
        logic = node.config.build(ctx)
        key = (node.name, replica)
        if node.kind == SOURCE:
            tasks[key] = SourceTask(logic, ctx, emitter, runner)
        else:
            inputs = len(wiring.inputs(node.name, replica))
            tasks[key] = Task(node.kind, logic, ctx, inputs, emitter, runner)
        contexts[key] = ctx
        emitters[key] = emitter
    sources = [t for t in tasks.values() if isinstance(t, SourceTask)]
    try:
        while sources:
            sources = [s for s in sources if s.step()]
    except BaseException:
        for task in tasks.values():
            task.abort()
        raise
    finally:
        runner.close()
    return _report(dag, tasks, contexts, emitters, time.perf_counter() - started)


def _report(
    dag: Dag,
    tasks: dict[tuple[str, int], Task | SourceTask],
    contexts: dict[tuple[str, int], Context],
    emitters: dict[tuple[str, int], Emitter],
    seconds: float,
) -> JobResult:
    nodes = {n.name: NodeReport() for n in dag.nodes}
    sinks: dict[str, list[Any]] = {}
    for (name, replica), task in sorted(tasks.items(), key=lambda kv: kv[0]):
        emitter = emitters[(name, replica)]
        nodes[name].add(
            task.records_in,
            emitter.records_out,
            contexts[(name, replica)].counters,
            {"logic_s": task.logic_ns / 1e9},
        )
        if isinstance(task, Task) and task.is_sink:
            sinks.setdefault(name, []).append(task.result)
    return JobResult(dag.name, seconds, nodes, sinks)
