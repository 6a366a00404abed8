"""The contract between the engine and the code it runs: sources, operators and sinks.

Each node is described by a *config* object: small, frozen, picklable, cheap to validate.
The engine ships configs to worker processes and calls ``config.build(ctx)`` there, once per
replica, to get the live *logic* that holds state. Logic is called a batch at a time:

* ``SourceLogic.batches()`` yields lists of records (or ``engine.columns.Columns``), and
  ``Watermark`` marks between them; it may be a generator or an async generator (run on uvloop).
  Once the stream is over, ``close()`` runs (its end, or a graceful stop), or ``abort()``
  (the job failed).
* ``OperatorLogic.process(batch)`` returns the records for the main output; it is told of
  watermarks (``on_watermark``) and of the end of input (``on_eof``), and may return records
  from both. Records for named side outputs (late data, router branches) go through
  ``ctx.emit_side(name, records)``.
* ``SinkLogic.write(batch)`` consumes records; ``close()`` returns the sink's result (it
  travels back to ``Job.wait()``), ``abort()`` runs instead when the job fails.

Two optional hooks let validation refuse, before anything starts, what would fail or do
harm later: ``declared_files(parallelism)`` (``Files``: the files a node reads and writes;
an input that is not there, two nodes writing one path, a node writing an input) and
``fields_read()`` (the record fields an operator or sink reads; an edge of records that
lack one); and for an operator, ``state_key()`` (how its state is split, so that a node of
several replicas whose input edges would scatter one key's records is refused).

Event time is integer nanoseconds since the Unix epoch throughout.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from engine.batch import MIN_WATERMARK
from engine.columns import Columns
from engine.errors import DagError

Batch = list[Any]


@dataclass(frozen=True)
class Watermark:
    """Yielded by a source between batches: no record with event time <= ts will follow
    that is not late."""

    ts: int


@dataclass
class Context:
    """What a replica's logic sees of the engine.

    ``clock`` returns processing time in ns (inject a fake one in tests). ``counters`` are
    named monotonic counts the logic keeps (``late``, ``throttled``, ...); the engine reports
    them in ``job.status()``, the job result and Prometheus
    (``ringflow_logic_counter_total{counter=...}``), and ``late``, ``paused_ns`` and
    ``pauses`` (a sink held back by its destination) as metrics of their own too.
    ``gauges`` hold last values (the metrics export ``queue_depth``). ``watermark`` is the
    current input watermark. ``job`` is the job's id (``Job.id``; empty where no job
    launched it, as in ``run_inline``). ``side_outputs`` are those the node declares, which
    ``emit_side`` holds it to (None, in a context made by hand: any).
    """

    node: str
    replica: int = 0
    parallelism: int = 1
    clock: Callable[[], int] = time.time_ns
    watermark: int = MIN_WATERMARK
    counters: dict[str, int] = field(default_factory=dict)
    gauges: dict[str, float] = field(default_factory=dict)
    side: dict[str, list[Any]] = field(default_factory=dict)
    job: str = ""
    side_outputs: tuple[str, ...] | None = None

    def emit_side(self, name: str, records: list[Any]) -> None:
        """Send records to the side output ``name`` (flushed by the engine after each call).
        One the node does not declare has no edge, so its records would be lost: that
        raises ``DagError`` (validation saw every declared one consumed)."""
        if records:
            if self.side_outputs is not None and name not in self.side_outputs:
                raise DagError(
                    f"node {self.node!r} sent {len(records)} record(s) to the side output "
                    f"{name!r}, which it does not declare: add {name!r} to its config's "
                    f"side_outputs, and connect it with .side({name!r})"
                )
            bucket = self.side.get(name)
            if bucket is None:
                self.side[name] = list(records)
            else:
                bucket.extend(records)

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def gauge(self, name: str, value: float) -> None:
        self.gauges[name] = value

    def take_side(self) -> dict[str, list[Any]]:
        """Hand over and forget what was emitted to side outputs since the last call."""
        side, self.side = self.side, {}
        return side


class SourceLogic:
    def batches(
        self,
    ) -> Iterator[Batch | Columns | Watermark] | AsyncIterator[Batch | Columns | Watermark]:
        """The stream: batches, and watermarks after the batches they cover.

        A generator suits a source that computes or reads its items (a generator, a file).
        A source that waits for them (a feed, a clock) should be an async generator and
        await: while a generator's ``next()`` blocks, its worker can do nothing else, so
        partial batches wait past their linger and a stop cannot interrupt the wait.
        While an async source awaits, its worker flushes, heartbeats and stops."""
        raise NotImplementedError

    def close(self) -> None:
        """Called once the stream has ended well: run to its end, or cut short by a graceful
        stop (what it yielded until then is the job's input), before the stream's end
        reaches downstream. Commit what the source wrote on the side (a dead-letter file).
        Optional, as ``abort`` is. It runs even where ``batches()`` never started (a stop
        before the start) or was abandoned still running (an async source that would not
        stop)."""

    def abort(self) -> None:
        """Called instead of ``close`` when the job fails: discard what it would commit."""


class OperatorLogic:
    # True: ``process`` also takes ``engine.columns.Columns`` batches as they come.
    # False (the default): the engine turns them into lists of records first.
    accepts_columns: bool = False

    def process(self, batch: Batch) -> Batch:
        raise NotImplementedError

    def on_watermark(self, watermark: int) -> Batch:
        return []

    def on_eof(self) -> Batch:
        return []


class SinkLogic:
    accepts_columns: bool = False  # as for OperatorLogic

    def write(self, batch: Batch) -> Awaitable[None] | None:
        raise NotImplementedError

    def on_watermark(self, watermark: int) -> None:
        return None

    def close(self) -> Any:
        return None

    def abort(self) -> None:
        return None


def hook(config: Any, name: str, *args: Any) -> Any:
    """``config``'s optional hook ``name`` (``declared_files``, ``fields_read``, ...),
    called; None when its class has none (a config need not subclass the bases, and a field
    of that name on an instance is not a hook)."""
    method = getattr(type(config), name, None)
    return method(config, *args) if callable(method) else None


def side_outputs(config: Any) -> tuple[str, ...]:
    """The side outputs a node's config declares (none, for one that says nothing)."""
    return tuple(getattr(config, "side_outputs", None) or ())


@dataclass(frozen=True)
class Files:
    """The files a node's replicas read and write, all together (see the module docstring)."""

    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()


NO_FILES = Files()


class Source:
    """Config of a source. ``output_type``: the msgspec Struct it emits, or None (pickled)."""

    output_type: Any = None

    def build(self, ctx: Context) -> SourceLogic:
        raise NotImplementedError

    def declared_files(self, parallelism: int) -> Files:
        return NO_FILES

    def parallelism_problem(self, parallelism: int) -> str:
        """Why this source cannot run ``parallelism`` replicas (validation refuses the DAG
        with it, naming the node), or "" when it can."""
        return ""


class StateKey:
    """A marker ``Operator.state_key`` returns; its name says what it means."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


STATELESS = StateKey("STATELESS")  # no state across records: any edge will do
ONE_STATE = StateKey("ONE_STATE")  # one state over all records: parallelism 1
ANY_KEY = StateKey("ANY_KEY")  # state per whole record: any key_by keeps equal ones together


class Operator:
    """Config of an operator. ``side_outputs`` names what it may pass to ``emit_side``;
    ``side_types`` gives their record types where known. Validation refuses a DAG where
    one of them has no consumer, since its records would be lost."""

    output_type: Any = None
    side_outputs: tuple[str, ...] = ()
    side_types: dict[str, Any] = {}

    def build(self, ctx: Context) -> OperatorLogic:
        raise NotImplementedError

    def fields_read(self) -> tuple[str, ...]:
        return ()

    def without_side(self, output: str) -> str:
        """The config change that does without side output ``output`` (for the message
        that refuses a DAG where nothing consumes it), or "" if there is none."""
        return ""

    def passes_input(self, output: str) -> bool:
        """Whether ``output`` carries the input records themselves (a filter's, a router's,
        a window's late records): where its type is left None, it has the inputs' type,
        when all the input edges have the same one."""
        return False

    def state_key(self) -> Any:
        """``STATELESS``, ``ONE_STATE``, ``ANY_KEY``, or the key (a field name, a tuple of
        names, a function) its state is kept per: with several replicas, each input edge
        must then be a key_by on fields of that key. For a function, validation cannot
        tell which key_by keeps a key's records together and accepts any: key_by that same
        function (or fields it reads all of), or one key's state splits across replicas."""
        return STATELESS


class PassesInput:
    """For an operator whose every output carries its input records (a filter, a router):
    each is typed as the input, unless the operator names a type."""

    def passes_input(self, output: str) -> bool:
        return True


class Sink:
    def build(self, ctx: Context) -> SinkLogic:
        raise NotImplementedError

    def declared_files(self, parallelism: int) -> Files:
        return NO_FILES

    def fields_read(self) -> tuple[str, ...]:
        return ()
