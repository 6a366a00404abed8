"""``CsvTicks``: ticks from a CSV file, optionally read as parallel byte ranges.

Format: UTF-8 text, a header line ``symbol,ts,price,size`` (a UTF-8 BOM and ``\\r\\n`` line
ends are accepted), then one tick per line: ``ts`` an integer (ns since the epoch), ``price``
a finite float, ``size`` a finite float > 0, ``symbol`` non-empty and taken verbatim. Fields
are split on ``,`` with no quoting, so a field cannot hold a comma. The last line may lack its
newline; every other empty line is a bad row (``empty line``).

Bad rows: by default the job stops with ``RecordError("path:line: reason ...")``, ``line``
being the physical line number (the header is line 1). With ``dead_letter=path`` each bad
row is written to that CSV (``line,raw,reason``; ``raw`` is the line without its line end,
bytes that are not UTF-8 shown as ``\\xNN``) and the job goes on. The file is written to a
temporary and renamed into place when the replica's stream ends well: at the end of its
input, or at a graceful stop (then it holds the bad rows read until the stop, as
``bad_rows`` counts them). If the job fails, the temporary is removed and an older file at
that path is left alone. With several replicas each writes
``<name>.<replica>.<ext>``. Bad rows are counted as ``bad_rows``.

Byte ranges: the file is cut into ``ranges`` byte ranges (default: one per replica) and
replica ``r`` of ``P`` reads ranges ``r, r + P, ...`` in turn (see ``operators.csvio``).
Watermarks follow each replica's own rows: after every batch, ``max ts read by this replica
- lateness_ns``. Downstream takes the minimum over its inputs, so a row can be late there
only if it is late against the rows before it in its own replica's input, a subset of the
rows before it in the file: splitting never makes a row late that a sequential read would
not. The cost is that event time advances only as fast as the slowest range: for a
time-sorted file, windows of later ranges wait in downstream state until the earlier ranges
are done, and the same ``lateness_ns`` as for a sequential read is enough.

Speed: the file is read in 1 MiB blocks of whole lines; each block is parsed straight into
columns by ``operators._csvticks`` (C, no record per row) where it is built and every line
is in its strict grammar, else by the msgspec fast path of ``operators.csvparse``, and a
block both refuse is parsed a batch of lines at a time, again by those two where they take
the batch and else with the ``str.split(',')`` loop that finds the bad lines. A bad line is
explained, and its line number found (by counting newlines up to its block, onward from the
last count), only when one occurs. Batches go out as ``engine.columns.Columns`` of ``Tick``, as the
generator's do: the symbol column travels dictionary-encoded and the tumbling window reads
the columns without a record per tick (OHLCV in C where ``operators._ohlcv`` is built).
The C parser gives the times, prices and sizes packed (``array.array``), as a channel
decodes them, so they go on the wire without a check per value and no number object is
made per tick anywhere in the job. Parsing a block of the generator's rows costs about
100 ns a row in C against about 1,000 through msgspec and ``Columns.from_rows``
(benchmarks/RESULTS.md).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from engine.columns import Columns, column_index, field_names
from engine.errors import DagError, RecordError
from engine.operator import Context, Files, Source, SourceLogic, Watermark
from engine.records import Tick
from engine.validate import check_ints
from operators.csvio import (
    DEAD_LETTER_HEADER,
    TICK_HEADER,
    AtomicFile,
    RangeReader,
    count_newlines,
    replica_path,
    replica_paths,
    split_points,
)
from operators.csvparse import diagnose, parse_block, parse_columns, parse_lines
from operators.tumbling import int_bounds

__all__ = ["CsvTicks", "check_header"]

MIN_TS = -(2**63)
_TS = column_index(Tick, "ts")
# operators._csvticks gives the columns in this order.
assert field_names(Tick) == ("symbol", "ts", "price", "size")


class _Undecodable(str):
    """Stands in for a line that is not UTF-8: its text (one NUL) never parses."""

    raw: str


@dataclass(frozen=True)
class CsvTicks(Source):
    """Config of a CSV tick source: ``CsvTicks("ticks.csv", lateness_ns=5_000_000)``.

    ``batch`` is ticks per batch (the last one may hold fewer).
    ``ranges=None`` reads one byte range per replica; a number splits the file that many ways
    whatever the parallelism.
    """

    path: str
    lateness_ns: int = 0
    batch: int = 4096
    dead_letter: str | None = None
    ranges: int | None = None

    output_type = Tick

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", os.fspath(self.path))
        if self.dead_letter is not None:
            object.__setattr__(self, "dead_letter", os.fspath(self.dead_letter))
        check_ints(self, "lateness_ns batch", optional="ranges")
        problems = []
        if self.lateness_ns < 0:
            problems.append(f"lateness_ns must be >= 0, got {self.lateness_ns}")
        if self.batch < 1:
            problems.append(f"batch must be >= 1, got {self.batch}")
        if self.ranges is not None and self.ranges < 1:
            problems.append(f"ranges must be >= 1 or None, got {self.ranges}")
        if problems:
            raise DagError(f"invalid CsvTicks({self.path!r}) config: {'; '.join(problems)}")

    def declared_files(self, parallelism: int) -> Files:
        dead = self.dead_letter
        writes = () if dead is None else replica_paths(dead, parallelism)
        return Files(reads=(self.path,), writes=writes)

    def build(self, ctx: Context) -> CsvTicksLogic:
        check_header(self.path)
        return CsvTicksLogic(self, ctx)


def check_header(path: str) -> None:
    """Raise ``RecordError`` naming the file unless its first line is the tick header."""
    with open(path, "rb") as f:
        first = f.readline()
    if not first:
        raise RecordError(f"{path}: the file is empty; expected the header line {TICK_HEADER!r}")
    text = first.decode("utf-8", "replace").removeprefix("\ufeff").rstrip("\r\n")
    if text != TICK_HEADER:
        raise RecordError(f"{path}:1: expected the header {TICK_HEADER!r}, got {text!r}")


class CsvTicksLogic(SourceLogic):
    """One replica of a ``CsvTicks`` source."""

    def __init__(self, config: CsvTicks, ctx: Context) -> None:
        self.config = config
        self.ctx = ctx
        self.high = MIN_TS  # highest ts this replica has emitted
        self.buffer: list[Any] = [[], [], [], []]  # columns not yet emitted
        self.dead: AtomicFile | None = None
        self.dead_rows: Any = None  # a csv writer into self.dead
        self._counted = (0, 0)  # (offset, newlines before it): line numbers, counted lazily

    def batches(self) -> Iterator[Columns | Watermark]:
        cfg, ctx = self.config, self.ctx
        n = cfg.ranges or ctx.parallelism
        bounds = split_points(os.path.getsize(cfg.path), n)
        if cfg.dead_letter is not None:
            self.dead = AtomicFile(
                replica_path(cfg.dead_letter, ctx.replica, ctx.parallelism), ctx.job
            )
            self.dead_rows = csv.writer(self.dead, lineterminator="\n")
            self.dead_rows.writerow(DEAD_LETTER_HEADER)
        with open(cfg.path, "rb") as f:
            for k in range(ctx.replica, n, ctx.parallelism):
                yield from self._range(f, bounds[k], bounds[k + 1])
        yield from self._emit(final=True)

    def close(self) -> None:
        """The stream ended well (read to its end, or stopped gracefully): the bad rows
        found so far are the dead letter."""
        if self.dead is not None:
            self.dead.commit()

    def abort(self) -> None:
        if self.dead is not None:
            self.dead.abort()

    def _emit(self, final: bool) -> Iterator[Columns | Watermark]:
        """Yield the buffered ticks in batches (the remainder too when ``final``)."""
        buffer, size, lateness = self.buffer, self.config.batch, self.config.lateness_ns
        held = len(buffer[0])
        full = held if final else held - held % size
        for a in range(0, full, size):
            out = Columns(Tick, tuple(column[a : a + size] for column in buffer))
            top = int_bounds(out.data[_TS])[1]
            if top > self.high:
                self.high = top
            yield out
            yield Watermark(self.high - lateness)
        for column in buffer:
            del column[:full]

    def _hold(self, columns: Sequence[Any]) -> None:
        """Buffer parsed rows, a new column per field (the C parser's with the numbers in
        arrays, or lists). A held column that is empty takes the parsed one as it is; one
        that cannot take the parsed values (an array and a time past int64 from the other
        parsers) goes on as a list."""
        buffer = self.buffer
        for k, parsed in enumerate(columns):
            held = buffer[k]
            if not len(held):
                buffer[k] = parsed  # the parser's own, new list or array: no copy
                continue
            before = len(held)
            try:
                held.extend(parsed)
            except (OverflowError, TypeError):
                del held[before:]  # an array takes a list's values one by one until one fails
                buffer[k] = [*held, *parsed]

    def _range(self, f: io.BufferedReader, start: int, end: int) -> Iterator[Columns | Watermark]:
        """Parse the lines of one byte range a block at a time, emitting full batches."""
        reader = RangeReader(f, start, end)
        header = reader.first == 0  # then the range's first line is the file's header
        for offset, block in reader.blocks():
            if header:
                cut = block.find(b"\n") + 1
                block = block[cut:] if cut else b""
                offset += cut
                header = False
            columns = _parse_fast(block)
            if columns is None:
                yield from self._lines(_split_lines(block), offset)
            else:
                self._hold(columns)
                yield from self._emit(final=False)

    def _lines(self, lines: list[str], offset: int) -> Iterator[Columns | Watermark]:
        """Parse lines the fast path refused as a block, a batch of lines at a time;
        ``offset`` is where ``lines[0]`` starts in the file."""
        size = self.config.batch
        for a in range(0, len(lines), size):
            chunk = lines[a : a + size]
            columns = _parse_fast(("\n".join(chunk) + "\n").encode())
            if columns is None:
                ticks: list[Tick] = []
                bad: list[str] = []
                parse_lines(chunk, ticks, bad)
                if bad:
                    self._reject(lines, a, bad, offset)
                columns = _columns_of(ticks)
            self._hold(columns)
            yield from self._emit(final=False)

    def _reject(self, lines: list[str], a: int, bad: list[str], offset: int) -> None:
        """Report ``bad``, the bad lines among ``lines[a:]`` in order; ``lines[0]`` starts
        at ``offset`` in the file."""
        self.ctx.count("bad_rows", len(bad))
        first = self._line_at(offset)
        for line in bad:
            # Equal lines parse alike, so the first equal line from a on is this one.
            i = lines.index(line, a)
            a = i + 1
            found = lines[i]
            if isinstance(found, _Undecodable):
                raw, reason = found.raw, "not valid UTF-8"
            else:
                raw, reason = found.removesuffix("\r"), diagnose(found)
            if self.dead_rows is None:
                raise RecordError(
                    f"{self.config.path}:{first + i}: {reason}; row: {raw!r} (to set bad rows "
                    "aside and go on, give CsvTicks a dead_letter='bad_rows.csv', or the "
                    "bars command --dead-letter BAD.csv)"
                )
            self.dead_rows.writerow((first + i, raw, reason))

    def _line_at(self, offset: int) -> int:
        """The physical line number of the line starting at ``offset``."""
        known, lines = self._counted if offset >= self._counted[0] else (0, 0)
        lines += count_newlines(self.config.path, known, offset)
        self._counted = (offset, lines)
        return lines + 1


def _columns_of(ticks: list[Tick]) -> Sequence[Any]:
    return Columns.from_rows(Tick, ticks).data


def _parse_fast(data: bytes) -> Sequence[Any] | None:
    """The columns of all rows of ``data`` by a fast path (C, else msgspec), or None when
    both refuse it: a row may be bad, for the reference loop to find."""
    columns = parse_columns(data)
    if columns is not None:
        return columns
    ticks = parse_block(data)
    return None if ticks is None else _columns_of(ticks)


def _split_lines(block: bytes) -> list[str]:
    """The lines of a block of whole lines; a line that is not UTF-8 becomes a marker."""
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        lines = text.split("\n")
        if text.endswith("\n"):
            lines.pop()
        return lines
    raw = block.split(b"\n")
    if block.endswith(b"\n"):
        raw.pop()
    lines = []
    for chunk in raw:
        try:
            lines.append(chunk.decode("utf-8"))
        except UnicodeDecodeError:
            marker = _Undecodable("\x00")
            marker.raw = chunk.decode("utf-8", "backslashreplace").removesuffix("\r")
            lines.append(marker)
    return lines
