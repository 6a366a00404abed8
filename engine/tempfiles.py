"""Where a file writer keeps its work until it commits, and how a job's leftovers go.

A writer of ``path`` for job ``owner`` writes ``.<name>.<owner>.<token>.tmp`` beside it
(``temporary_path``): the rename into place is then atomic, and whoever knows the job's id
and its DAG can find what the job's writers left. A writer normally removes its own
temporary when it aborts; one killed with SIGKILL cannot, so ``remove_temporaries`` runs
after the last of a job's workers is dead: in the coordinator's teardown (a worker that
outlived its SIGTERM grace was SIGKILLed), and in the driver when the coordinator died
(its workers die with it by PDEATHSIG, which is SIGKILL). Only the files each node declares
(``declared_files``) are looked at, and only temporaries named for this job.
"""

from __future__ import annotations

import glob
import os
import secrets

from engine.dag import Dag
from engine.validate import declared_writes

__all__ = ["remove_temporaries", "temporary_path", "written_paths"]


def temporary_path(path: str, owner: str) -> str:
    """A fresh hidden name beside ``path`` for ``owner``'s work on it (no dots in owner)."""
    head, name = os.path.split(os.path.abspath(path))
    return os.path.join(head, f".{name}.{owner}.{secrets.token_hex(4)}.tmp")


def written_paths(dag: Dag) -> list[str]:
    """The absolute paths of the files ``dag``'s nodes declare they write: taken at launch,
    so a later change of folder does not move them."""
    return [os.path.abspath(path) for path in declared_writes(dag)]


def remove_temporaries(paths: list[str], owner: str) -> list[str]:
    """Remove the temporaries ``owner``'s writers left beside ``paths`` (``written_paths``);
    the paths removed. Call it only once none of those writers can still be running."""
    removed = []
    for path in paths:
        head, name = os.path.split(path)
        pattern = os.path.join(glob.escape(head), glob.escape(f".{name}.{owner}.") + "*.tmp")
        for temp in glob.glob(pattern):
            try:
                os.unlink(temp)
            except OSError:  # gone already, or not ours to remove: leave it
                continue
            removed.append(temp)
    return removed
