"""Durations as integer nanoseconds: ``parse_duration("500ms") == 500_000_000``.

Every time in ringflow is an ``int`` of nanoseconds (event time since the Unix epoch, or a
length). Configs accept either that int or a short duration string, and normalise to the int
when they are built, so ``Tumbling("1s") == Tumbling(1_000_000_000)``.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from engine.errors import DagError

__all__ = ["NS_PER_UNIT", "parse_duration", "to_ns"]

NS_PER_UNIT: dict[str, int] = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3_600 * 1_000_000_000,
    "d": 86_400 * 1_000_000_000,
}

_DURATION = re.compile(r"\s*(-?\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s|m|h|d)\s*")
_UNITS = ", ".join(repr(u) for u in NS_PER_UNIT)


def parse_duration(text: str) -> int:
    """The number of nanoseconds ``text`` spells: a number and one unit out of ns, us (or
    µs), ms, s, m (minutes), h, d. Decimals are fine when they come to whole nanoseconds
    (``"1.5s"``, not ``"1.5ns"``)."""
    if not isinstance(text, str):
        raise DagError(f"a duration must be a string such as '500ms', got {text!r}")
    match = _DURATION.fullmatch(text)
    if match is None:
        raise DagError(
            f"cannot read {text!r} as a duration: write a number and a unit, such as '500ms', "
            f"'1s', '5m' or '250us' (units: {_UNITS})"
        )
    number, unit = match.groups()
    try:
        ns = Decimal(number) * NS_PER_UNIT[unit]
    except InvalidOperation:  # pragma: no cover - the regex admits only valid decimals
        raise DagError(f"cannot read {text!r} as a duration") from None
    if ns != ns.to_integral_value():
        raise DagError(f"duration {text!r} is not a whole number of nanoseconds")
    return int(ns)


def to_ns(value: int | str, what: str = "duration") -> int:
    """``value`` as int nanoseconds: an int passes through, a string is parsed.

    ``what`` names the setting in error messages (``"Tumbling size_ns"``).
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise DagError(
            f"{what} must be an int of nanoseconds or a duration string such as '1s', "
            f"got {type(value).__name__} {value!r}"
        )
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except DagError as exc:
            raise DagError(f"{what}: {exc}") from None
    return value
