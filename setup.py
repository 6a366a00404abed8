"""The one compiled piece, ``partitioning._native`` (see partitioning/_native.c).

It is optional: where no C compiler is found the build says so and goes on, and the engine
runs the same routine in Python (``partitioning.keyhash``), only slower. Everything else
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
        )
    ]
)
