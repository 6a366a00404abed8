"""One runtime API for linear pipelines and DAGs: ``PipelineRuntime``.

A pipeline is the common case of a DAG: one source, operators in a row, one sink.
``PipelineRuntime`` builds that DAG (``pipeline_dag``) and runs it on the same engine, with
the same settings, as any other DAG; there is no second runtime::

    runtime = PipelineRuntime(slots=16, metrics_port=9100)
    result = runtime.run_pipeline(
        Generator(count=1_000_000),
        [WindowAggregate(Tumbling("1s"), OHLCV())],
        CsvBars("bars.csv"),
        key="symbol",
        parallelism=3,
        side_sinks={"late": CsvTicksSink("late.csv")},  # the window's late ticks
    )
    result = runtime.run_dag(dag)          # any DAG, same engine and settings
    job = runtime.launch_dag(dag)          # or launch_pipeline(...): a running Job

Settings are ``engine.launch``'s (``slots``, ``slot_size``, ``linger``, ``metrics_port``, ...),
checked when the runtime is made. ``inline=True`` runs every job in this process with
``engine.testing.run_inline`` (same tasks and partitioners, deterministic; the settings,
which describe channels and processes, then have nothing to apply to).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from engine.coordinator import Settings
from engine.dag import Dag, Stream
from engine.errors import DagError, RingflowError
from engine.job import Job, launch
from engine.operator import Operator, Sink, Source, hook
from engine.result import JobResult

__all__ = ["PipelineRuntime", "pipeline_dag"]


def pipeline_dag(
    source: Source,
    operators: Operator | Sequence[Operator],
    sink: Sink,
    *,
    parallelism: int = 1,
    key: str | Callable[[Any], Any] | None = None,
    source_parallelism: int = 1,
    sink_parallelism: int = 1,
    side_sinks: Mapping[str, Sink] | None = None,
    name: str = "pipeline",
) -> Dag:
    """The DAG ``source -> operators[0] -> ... -> sink``.

    Nodes are named ``source``, then each operator by its class in lower case (``map``,
    ``windowaggregate``; ``map_2`` for a second ``Map``), then ``sink``. Operators run with
    ``parallelism`` replicas. With ``key`` (a field name or a picklable function) every
    operator's input is hash-partitioned on it, so each key's records meet in one replica
    (what keyed operators such as windows need); without it edges take the engine's default
    (forward between equal parallelisms, rebalance otherwise).

    ``side_sinks`` gives each operator's side outputs a sink, a node named
    ``<operator>_<output>``: the key ``"late"`` serves every operator with that side output,
    ``"windowaggregate.late"`` that one operator (it wins). A side output left without a
    sink is refused, since its records would be lost.
    """
    if isinstance(operators, Operator):
        operators = [operators]
    for i, op in enumerate(operators):
        if not isinstance(op, Operator):
            raise DagError(
                f"pipeline {name!r}: operators[{i}] is a {type(op).__name__}, not an "
                "engine.Operator config; sources go first and sinks last"
            )
    dag = Dag(name)
    stream: Stream = dag.source("source", source, source_parallelism)
    taken: dict[str, int] = {}
    sides = dict(side_sinks or {})
    unused = set(sides)
    for op in operators:
        base = type(op).__name__.lower()
        taken[base] = taken.get(base, 0) + 1
        node = base if taken[base] == 1 else f"{base}_{taken[base]}"
        if key is not None:
            stream = stream.key_by(key)
        stream = stream.apply(node, op, parallelism)
        for output in op.side_outputs:
            named = f"{node}.{output}" if f"{node}.{output}" in sides else output
            if named not in sides:
                instead = hook(op, "without_side", output)
                raise DagError(
                    f"pipeline {name!r}: operator {node!r} sends records to its side output "
                    f"{output!r}, which would be lost: pass side_sinks={{{output!r}: <a sink>}}"
                    + (f", or {instead}" if instead else "")
                )
            stream.side(output).sink(f"{node}_{output}", sides[named], sink_parallelism)
            unused.discard(named)
    if unused:
        raise DagError(
            f"pipeline {name!r}: side_sinks names {sorted(unused)}, which no operator declares; "
            "drop them, or name a side output ('late'), or an operator's ('windowaggregate.late')"
        )
    stream.sink("sink", sink, sink_parallelism)
    return dag


class PipelineRuntime:
    """Runs pipelines and DAGs with one set of engine settings (see the module docstring).

    Not thread-safe, like ``engine.Job``: use a runtime from one thread.
    """

    def __init__(self, *, inline: bool = False, **settings: Any) -> None:
        Settings.checked(**settings)
        self.inline = inline
        self.settings = dict(settings)

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.settings.items())
        return f"PipelineRuntime(inline={self.inline}{', ' if shown else ''}{shown})"

    # -- DAGs -----------------------------------------------------------------------------

    def launch_dag(self, dag: Dag) -> Job:
        """Validate and start ``dag`` across worker processes; the running ``Job``."""
        if self.inline:
            raise RingflowError(
                "an inline PipelineRuntime runs jobs to completion in this process and "
                "cannot launch one in the background; use run_dag(), or "
                "PipelineRuntime(inline=False)"
            )
        return launch(dag, **self.settings)

    def run_dag(self, dag: Dag, *, timeout: float | None = None) -> JobResult:
        """Run ``dag`` to completion; its result, or ``JobFailed``. ``timeout`` (seconds)
        bounds a multi-process run (``TimeoutError`` after it, the job killed); an inline
        run has no timeout."""
        if self.inline:
            from engine.testing import run_inline

            return run_inline(dag)
        with self.launch_dag(dag) as job:
            return job.wait(timeout)

    # -- pipelines ------------------------------------------------------------------------

    def launch_pipeline(
        self,
        source: Source,
        operators: Operator | Sequence[Operator],
        sink: Sink,
        **shape: Any,
    ) -> Job:
        """``launch_dag(pipeline_dag(source, operators, sink, **shape))``."""
        return self.launch_dag(pipeline_dag(source, operators, sink, **shape))

    def run_pipeline(
        self,
        source: Source,
        operators: Operator | Sequence[Operator],
        sink: Sink,
        *,
        timeout: float | None = None,
        **shape: Any,
    ) -> JobResult:
        """Run the linear pipeline ``source -> operators -> sink``; ``shape`` is
        ``pipeline_dag``'s keywords (parallelism, key, ...)."""
        return self.run_dag(pipeline_dag(source, operators, sink, **shape), timeout=timeout)
