"""The compiled pieces: ``partitioning._native`` (the key-hash splitter's loop, see
partitioning/_native.c), ``engine._strings`` (dictionary-encoded string columns, see
engine/_strings.c) and ``operators._bounds`` (a time column's bounds, see
operators/_bounds.c).

All are optional: where no C compiler is found the build says so and goes on; the engine
then splits in Python (``partitioning.keyhash``), only slower, sends string columns as
they are, and the tumbling window takes its bounds with min() and max(). Everything else
about the package is in pyproject.toml.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "partitioning._native",
            ["partitioning/_native.c"],
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
            "operators._bounds",
            ["operators/_bounds.c"],
            optional=True,
            extra_compile_args=["-O2"],
        ),
    ]
)
