"""Window assigners: which event-time windows a record at time ``t`` (int ns) belongs to.

Windows are half-open intervals ``[start, end)`` of event time. Fixed windows are aligned to
the Unix epoch plus ``offset_ns``: ``Tumbling("1h", offset_ns="30m")`` has windows starting
at hh:30; a daily window that opens with the session is ``Tumbling("1d", offset_ns=...)``.
Offsets are taken modulo the size (or slide), so any offset, even a negative one, is fine.

* ``Tumbling(size_ns)``: one window per record, ``start = t - (t - offset) % size``.
* ``Sliding(size_ns, slide_ns)``: windows of length ``size`` every ``slide``; a record is in
  every window that covers it (``size / slide`` of them when slide divides size).
  ``slide_ns`` may not exceed ``size_ns``: a record falling between windows would belong to
  none, and ringflow never loses a record silently.
* ``Session(gap_ns)``: per key, records closer than ``gap`` in event time share a window;
  a session is ``[first ts, last ts + gap)``. Sessions merge as records bridge them.

Assigners are frozen, picklable configs; sizes may be given as ints of nanoseconds or
duration strings (``"500ms"``), and are stored as ints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from engine.errors import DagError
from operators.durations import to_ns

__all__ = ["Assigner", "Session", "Sliding", "Tumbling"]


def _positive(value: int | str, what: str) -> int:
    ns = to_ns(value, what)
    if ns <= 0:
        raise DagError(f"{what} must be positive, got {value!r}")
    return ns


@dataclass(frozen=True)
class Tumbling:
    """Back-to-back windows of ``size_ns``, starting at ``offset_ns`` modulo ``size_ns``."""

    size_ns: int | str
    offset_ns: int | str = 0

    def __post_init__(self) -> None:
        size = _positive(self.size_ns, "Tumbling size_ns")
        object.__setattr__(self, "size_ns", size)
        object.__setattr__(self, "offset_ns", to_ns(self.offset_ns, "Tumbling offset_ns") % size)

    @property
    def size(self) -> int:
        return cast(int, self.size_ns)

    @property
    def offset(self) -> int:
        return cast(int, self.offset_ns)

    def windows(self, t: int) -> list[tuple[int, int]]:
        """The window ``[start, end)`` holding event time ``t``, as a one-item list."""
        start = t - (t - self.offset) % self.size
        return [(start, start + self.size)]


@dataclass(frozen=True)
class Sliding:
    """Windows of ``size_ns`` starting every ``slide_ns`` (at ``offset_ns`` modulo slide)."""

    size_ns: int | str
    slide_ns: int | str
    offset_ns: int | str = 0

    def __post_init__(self) -> None:
        size = _positive(self.size_ns, "Sliding size_ns")
        slide = _positive(self.slide_ns, "Sliding slide_ns")
        if slide > size:
            raise DagError(
                f"Sliding slide_ns ({slide}) is longer than size_ns ({size}): records between "
                "windows would belong to none. Use a slide no longer than the size "
                "(slide == size is Tumbling), or filter records before windowing"
            )
        object.__setattr__(self, "size_ns", size)
        object.__setattr__(self, "slide_ns", slide)
        object.__setattr__(self, "offset_ns", to_ns(self.offset_ns, "Sliding offset_ns") % slide)

    @property
    def size(self) -> int:
        return cast(int, self.size_ns)

    @property
    def slide(self) -> int:
        return cast(int, self.slide_ns)

    @property
    def offset(self) -> int:
        return cast(int, self.offset_ns)

    def first_start(self, t: int) -> int:
        """Start of the earliest window holding ``t`` (the first to close)."""
        last = t - (t - self.offset) % self.slide
        return last - (last - (t - self.size + 1)) // self.slide * self.slide

    def windows(self, t: int) -> list[tuple[int, int]]:
        """Every window ``[start, end)`` holding ``t``, earliest first."""
        last = t - (t - self.offset) % self.slide
        return [(s, s + self.size) for s in range(self.first_start(t), last + 1, self.slide)]


@dataclass(frozen=True)
class Session:
    """Per-key windows of activity: a gap of ``gap_ns`` or more between records ends one."""

    gap_ns: int | str

    def __post_init__(self) -> None:
        object.__setattr__(self, "gap_ns", _positive(self.gap_ns, "Session gap_ns"))

    @property
    def gap(self) -> int:
        return cast(int, self.gap_ns)


Assigner = Tumbling | Sliding | Session
