"""``"module:attribute"`` references: how a config names code to import in the process that
runs it (a DAG builder for the command line, a store or provider factory in a worker)."""

from __future__ import annotations

import importlib
from typing import Any

from engine.errors import DagError, RingflowError


def import_ref(ref: str, what: str, error: type[RingflowError] = DagError, hint: str = "") -> Any:
    """The object ``ref`` names (``attribute`` may be dotted), imported now.

    ``error`` is raised, naming ``what`` and ``ref``, when ``ref`` is malformed or its module
    or attribute cannot be found; ``hint`` is appended to an import failure (how to install
    an optional package, say).
    """
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise error(f"{what} must look like 'module:attribute', got {ref!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except (ImportError, TypeError) as exc:  # TypeError: a relative name, as in './x'
        if module_name.endswith(".py") or "/" in module_name:  # a file, not a module
            hint += (
                "; give a module's dotted name, importable from here (run from its folder, "
                "or put that folder on PYTHONPATH), not a file's path"
            )
            if not module_name.startswith((".", "/")):
                hint += f": {module_name.removesuffix('.py').replace('/', '.')}"
        raise error(f"{what} {ref!r}: cannot import {module_name!r} ({exc}){hint}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise error(f"{what} {ref!r}: {module_name!r} has no {attr!r}") from None
    return obj
