"""The compiled pieces: ``partitioning._native`` (the key-hash splitter's loop, see
partitioning/_native.c), ``engine._strings`` (dictionary-encoded string columns, see
engine/_strings.c), ``engine._numbers`` (numeric columns packed, see engine/_numbers.c),
``operators._columns`` (a time column's bounds, see operators/_columns.c),
``operators._csvticks`` (CSV tick rows straight into columns, see operators/_csvticks.c)
and ``operators._ohlcv`` (OHLCV over the columns of one window's batch, see
operators/_ohlcv.c).

All are optional: where no C compiler is found the build says so and goes on; the engine
then splits in Python (``partitioning.keyhash``), only slower, sends string and numeric columns as
they are, and the tumbling window takes its bounds with min() and max() and runs OHLCV in
its generated Python loop, and the CSV source parses every block through msgspec, with the
same results. Everything else about the package is in
pyproject.toml.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "partitioning._native",
            ["partitioning/_native.c"],
            depends=["operators/_packed.h"],
            optional=True,
            extra_compile_args=["-O2"],
        ),
        Extension(
            "engine._strings",
            ["engine/_strings.c"],
            optional=True,
            extra_compile_args=["-O2"],
        ),
        Extension(
            "engine._numbers",
            ["engine/_numbers.c"],
            optional=True,
            extra_compile_args=["-O2"],
        ),
        Extension(
            "operators._columns",
            ["operators/_columns.c"],
            depends=["operators/_packed.h"],
            optional=True,
            extra_compile_args=["-O2"],
        ),
        Extension(
            "operators._csvticks",
            ["operators/_csvticks.c"],
            depends=["operators/_packed.h"],
            optional=True,
            extra_compile_args=["-O2"],
        ),
        Extension(
            "operators._ohlcv",
            ["operators/_ohlcv.c"],
            depends=["operators/_packed.h"],
            optional=True,
            # No fused multiply-add: price * size is rounded before it is summed, as in Python.
            extra_compile_args=["-O2", "-ffp-contract=off"],
        ),
    ]
)
