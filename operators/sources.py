"""Sources of ticks: a synthetic generator and a CSV reader.

The implementations live in small modules (``operators.generator``, ``operators.csvsource``,
with the CSV grammar in ``operators.csvparse`` and file plumbing in ``operators.csvio``);
this module gathers the public names.
"""

from __future__ import annotations

from operators.csvsource import CsvTicks
from operators.generator import Generator, generate

__all__ = ["CsvTicks", "Generator", "generate"]
