"""A deterministic synthetic tick source that scales across source replicas.

The stream is a function of the config alone. Global tick ``i`` belongs to symbol
``i % symbols`` and has nominal event time ``start_ns + i * step_ns``; ticks come in *rounds*
of ``symbols`` ticks, one per symbol. Replica ``r`` of ``P`` owns the symbols ``s`` with
``s % P == r`` and emits their ticks in global order, so:

* the union of the replicas' streams is exactly the one-replica stream (as a multiset), for
  every ``P``; ``generate()`` returns the one-replica stream for reference computations;
* each replica holds the whole history of its symbols, so every symbol's price is a true
  random walk whatever ``P`` is;
* every replica's event time advances at the same pace, so no replica holds the downstream
  watermark (the minimum over inputs) back. With ``symbols < P`` some replicas are empty.

Randomness: every replica draws the same per-round random bytes from generators seeded by
``seed`` (a few bytes per tick, in C) and keeps the bytes of its own symbols. Prices, disorder
and lateness draw from separate generators, so turning disorder on does not change prices.
All per-tick work is done by C-level ``map``/comprehensions over whole rounds.

* Price: a random walk in integer cents (steps of -3..+3 cents, reflected at 1 cent), so a
  price is exactly ``cents / 100``. Size: a positive whole number, as a float.
* Disorder: each tick's event time is moved back by one of 256 evenly spaced values in
  ``[0, disorder_ns]``, uniformly at random.
* Late ticks: with ``late_fraction > 0`` that fraction of ticks is moved back a further
  ``lateness_ns + late_by_ns``. Such a tick is behind its replica's last watermark (so a window
  operator sees it as late) once the stream has run ``late_by_ns``, provided ``late_by_ns``
  exceeds the event-time span of one of that replica's batches plus disorder
  (``batch * parallelism * step_ns + disorder_ns``). Counted as ``late_injected``.
* Batches are ``engine.columns.Columns`` of ``Tick``: no object is built per tick until an
  operator that wants records asks for them.
* Watermarks: after every batch, ``Watermark(max event time emitted so far - lateness_ns)``.
  With ``lateness_ns >= disorder_ns`` (the default makes them equal) only injected late ticks
  are late.
* Pacing: ``rate`` is ticks per second for the whole source; a replica paces its share. Time
  comes from ``ctx.clock`` (ns) and waits go through ``sleep`` (seconds), both injectable.
"""

from __future__ import annotations

import math
import random
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from operator import add
from typing import Any

from engine.columns import Columns
from engine.errors import DagError
from engine.operator import Context, Source, SourceLogic, Watermark
from engine.records import Tick
from engine.validate import check_ints
from operators.tumbling import int_bounds

__all__ = ["Generator", "generate"]

DEFAULT_START_NS = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20Z
# Price steps in cents, indexed by a random byte; symmetric, so the walk has no drift.
_STEPS = (-3, -2, -2, -1, -1, -1, 0, 0, 0, 0, 1, 1, 1, 2, 2, 3) * 16
_STEP_TABLE = bytes(step & 0xFF for step in _STEPS)  # bytes.translate then array('b')
# Trade sizes indexed by a random byte: mostly small and round lots, a few blocks.
_SIZE_CHOICES = (1, 2, 5, 10, 10, 20, 25, 50, 50, 100, 100, 100, 100, 200, 200, 300, 400, 500)
_BLOCKS = (1000.0, 1000.0, 1000.0, 2000.0, 2500.0, 5000.0, 10000.0, 25000.0)
_SIZES = (*(float(_SIZE_CHOICES[b % len(_SIZE_CHOICES)]) for b in range(248)), *_BLOCKS)


@dataclass(frozen=True)
class Generator(Source):
    """Config of the synthetic tick source (see the module docstring for the stream).

    ``count=None`` runs until the job is stopped. ``lateness_ns=None`` means ``disorder_ns``.
    ``late_by_ns=None`` means one second. ``sleep`` is used for pacing only (default
    ``time.sleep``); it must pickle to cross to a worker process.
    """

    symbols: int = 1000
    count: int | None = 1_000_000
    rate: float | None = None
    seed: int = 0
    disorder_ns: int = 0
    lateness_ns: int | None = None
    late_fraction: float = 0.0
    late_by_ns: int | None = None
    batch: int = 4096
    start_ns: int = DEFAULT_START_NS
    step_ns: int = 10_000
    sleep: Callable[[float], Any] | None = None

    output_type = Tick

    def __post_init__(self) -> None:
        check_ints(
            self,
            "symbols seed disorder_ns batch start_ns step_ns",
            optional="count lateness_ns late_by_ns",
        )
        problems = []
        if self.symbols < 1:
            problems.append(f"symbols must be >= 1, got {self.symbols}")
        if self.count is not None and self.count < 0:
            problems.append(f"count must be >= 0 or None, got {self.count}")
        if self.rate is not None and not self.rate > 0:
            problems.append(f"rate must be > 0 ticks/s or None, got {self.rate}")
        if self.batch < 1:
            problems.append(f"batch must be >= 1, got {self.batch}")
        if self.disorder_ns < 0:
            problems.append(f"disorder_ns must be >= 0, got {self.disorder_ns}")
        if self.lateness_ns is not None and self.lateness_ns < 0:
            problems.append(f"lateness_ns must be >= 0 or None, got {self.lateness_ns}")
        if not 0.0 <= self.late_fraction <= 1.0:
            problems.append(f"late_fraction must be in [0, 1], got {self.late_fraction}")
        if self.late_by_ns is not None and self.late_by_ns < 0:
            problems.append(f"late_by_ns must be >= 0 or None, got {self.late_by_ns}")
        if self.step_ns < 0:
            problems.append(f"step_ns must be >= 0, got {self.step_ns}")
        if problems:
            raise DagError(f"invalid Generator config: {'; '.join(problems)}")

    @property
    def lateness(self) -> int:
        """The watermark's bound on out-of-orderness, in ns."""
        return self.disorder_ns if self.lateness_ns is None else self.lateness_ns

    def symbol_names(self) -> list[str]:
        """The symbol of every index: ``S0000``, ``S0001``, ... (at least four digits)."""
        width = max(4, len(str(self.symbols - 1)))
        return [f"S{s:0{width}d}" for s in range(self.symbols)]

    def build(self, ctx: Context) -> GeneratorLogic:
        return GeneratorLogic(self, ctx)


class GeneratorLogic(SourceLogic):
    """One replica's share of a ``Generator`` stream."""

    def __init__(self, config: Generator, ctx: Context) -> None:
        if not 0 <= ctx.replica < ctx.parallelism:
            raise DagError(
                f"node {ctx.node!r}: replica {ctx.replica} is outside parallelism {ctx.parallelism}"
            )
        self.config = config
        self.ctx = ctx

    def batches(self) -> Iterator[Columns | Watermark]:
        cfg = self.config
        size, lateness = cfg.batch, cfg.lateness
        columns: list[list[Any]] = [[], [], [], []]  # generated, not yet emitted
        times = columns[1]
        high = None
        pace = _Pacer(cfg, self.ctx) if cfg.rate is not None else None
        rounds = self._rounds()
        while True:
            more: tuple[list[Any], ...] | None = next(rounds, None)
            if more is not None:
                for mine, new in zip(columns, more, strict=True):
                    mine += new
            held = len(times)
            full = held if more is None else held - held % size
            for a in range(0, full, size):
                batch = [column[a : a + size] for column in columns]
                top = int_bounds(batch[1])[1]
                high = top if high is None or top > high else high
                yield Columns(Tick, batch)
                yield Watermark(high - lateness)
                if pace is not None:
                    pace.wait(min(size, full - a))
            if more is None:
                return
            for column in columns:
                del column[:full]

    def _rounds(self) -> Iterator[tuple[list[str], list[int], list[float], list[float]]]:
        """Yield this replica's ticks, one round at a time, as columns (the fields of
        ``Tick``: symbols, event times, prices, sizes)."""
        cfg, ctx = self.config, self.ctx
        r, p, n_sym = ctx.replica, ctx.parallelism, cfg.symbols
        names = cfg.symbol_names()[r::p]
        init = random.Random(f"ringflow.Generator:{cfg.seed}:init")
        cents = [init.randrange(1_000, 50_000) for _ in range(n_sym)][r::p]
        draw_walk = random.Random(f"ringflow.Generator:{cfg.seed}:walk").randbytes
        draw_disorder = random.Random(f"ringflow.Generator:{cfg.seed}:disorder").randbytes
        late_rng = random.Random(f"ringflow.Generator:{cfg.seed}:late")
        disorder, step, fraction = cfg.disorder_ns, cfg.step_ns, cfg.late_fraction
        # Jitter is looked up by a random byte: 256 evenly spaced values over [0, disorder_ns].
        # A small table stays in cache; finer draws cost a big-int multiply per tick.
        shift_of = [b * disorder // 255 for b in range(256)]
        late_shift = cfg.lateness + (1_000_000_000 if cfg.late_by_ns is None else cfg.late_by_ns)
        sizes = _SIZES
        total = cfg.count
        k = 0
        while total is None or k * n_sym < total:
            remaining = n_sym if total is None else min(n_sym, total - k * n_sym)
            mine = len(range(r, remaining, p))
            walk = draw_walk(2 * n_sym)
            jitter = draw_disorder(n_sym) if disorder else b""
            late = _late_positions(late_rng, fraction, n_sym) if fraction else []
            base = cfg.start_ns + k * n_sym * step
            k += 1
            if mine == 0:
                continue
            if mine < len(cents):  # the last, partial round
                names, cents = names[:mine], cents[:mine]
            steps = array("b", walk[:n_sym].translate(_STEP_TABLE)[r::p][:mine])
            cents = list(map(add, cents, steps))
            if min(cents) < 1:
                cents = [c if c >= 1 else 2 - c for c in cents]
            nominal = range(base + r * step, base + remaining * step, p * step)
            if disorder:
                times = [t - shift_of[b] for t, b in zip(nominal, jitter[r::p], strict=False)]
            else:
                times = list(nominal)
            if late:
                hits = [(s - r) // p for s in late if s % p == r and s < remaining]
                for j in hits:
                    times[j] -= late_shift
                if hits:
                    ctx.count("late_injected", len(hits))
            prices = [c / 100 for c in cents]
            amounts = [sizes[b] for b in walk[n_sym:][r::p][:mine]]
            yield names, times, prices, amounts


def _late_positions(rng: random.Random, fraction: float, n: int) -> list[int]:
    """Positions in ``range(n)``, each present with probability ``fraction`` (independently),
    drawn as geometric gaps: O(n * fraction) work rather than one draw per position."""
    if fraction >= 1.0:
        return list(range(n))
    scale = 1.0 / math.log1p(-fraction)
    out = []
    pos = int(math.log1p(-rng.random()) * scale)
    while pos < n:
        out.append(pos)
        pos += 1 + int(math.log1p(-rng.random()) * scale)
    return out


class _Pacer:
    """Holds a replica to its share of ``rate`` ticks/s, by processing time."""

    def __init__(self, cfg: Generator, ctx: Context) -> None:
        assert cfg.rate is not None
        share = len(range(ctx.replica, cfg.symbols, ctx.parallelism)) / cfg.symbols
        self.ns_per_tick = 1e9 / (cfg.rate * share) if share else 0.0
        self.clock = ctx.clock
        self.sleep = time.sleep if cfg.sleep is None else cfg.sleep
        self.start = self.clock()
        self.emitted = 0

    def wait(self, n: int) -> None:
        self.emitted += n
        behind = self.start + self.emitted * self.ns_per_tick - self.clock()
        if behind > 0:
            self.sleep(behind / 1e9)


def generate(
    config: Generator | None = None,
    /,
    *,
    replica: int = 0,
    parallelism: int = 1,
    **params: Any,
) -> list[Tick]:
    """Every tick of one replica's share (by default the whole stream), in emission order.

    Pass a ``Generator`` or its parameters: ``generate(symbols=10, count=1000, seed=1)``.
    Pacing is ignored.
    """
    if config is None:
        config = Generator(**params)
    elif params:
        raise TypeError("generate() takes a Generator or its parameters, not both")
    if config.count is None:
        raise DagError("generate() needs a finite count; got Generator(count=None)")
    ctx = Context(node="generate", replica=replica, parallelism=parallelism)
    logic = GeneratorLogic(config, ctx)
    out: list[Tick] = []
    for columns in logic._rounds():
        out += map(Tick, *columns)
    return out
