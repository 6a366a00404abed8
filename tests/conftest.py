"""Shared fixtures: every test must leave no shared-memory segment and no child process behind."""

from __future__ import annotations

import multiprocessing
import os
import time

import pytest

SHM = "/dev/shm"


def _segments() -> set[str]:
    """This test process's segments: channel and job names start with the creator's pid."""
    prefix = f"ringflow-{os.getpid()}-"
    return {name for name in os.listdir(SHM) if name.startswith(prefix)}


@pytest.fixture(autouse=True)
def no_leaks():
    """Fail a test that leaves a ringflow segment in /dev/shm or a live child process."""
    before = _segments()
    yield
    deadline = time.monotonic() + 5.0
    children = multiprocessing.active_children()
    while children and time.monotonic() < deadline:
        for child in children:
            child.join(timeout=0.1)
        children = multiprocessing.active_children()
    leaked = _segments() - before
    for name in leaked:
        os.unlink(os.path.join(SHM, name))
    for child in children:
        child.kill()
        child.join(timeout=5)
    assert not leaked, f"shared-memory segments left behind: {sorted(leaked)}"
    assert not children, f"child processes left running: {children}"


@pytest.fixture
def spawn():
    """The multiprocessing context the engine itself uses."""
    return multiprocessing.get_context("spawn")
