"""The command line: ``python -m engine run module:attribute`` and ``python -m engine bars``.

Exit status: 0 when the job finished (or was stopped gracefully), 1 when it failed, 2 for a
bad command line, bad settings or a bad DAG, 130 when interrupted twice.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import inspect
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from engine.batch import DEFAULT_LINGER_S
from engine.dag import Dag
from engine.errors import DagError, JobFailed, RecordError, RingflowError, SettingsError
from engine.job import Job, launch
from engine.refs import import_ref
from engine.result import JobResult

PROGRESS_EVERY_S = 1.0
# GNU timeout sends its SIGTERM to the command, then to the command's process group: the
# driver gets two, a moment apart. One request: a second SIGTERM within this many seconds
# of the first does not turn the graceful stop into a kill.
SAME_SIGTERM_S = 1.0
_SELF_EXPLAINING = {cls.__name__ for cls in (DagError, RecordError)}


def _parse_param(text: str) -> tuple[str, Any]:
    """KEY=VALUE, the value a Python literal or else a plain string."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"want KEY=VALUE, got {text!r}")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key, value


def load_dag(target: str, params: dict[str, Any]) -> Dag:
    """``module:attribute``: a Dag, or a function returning one (called with ``params``)."""
    obj = import_ref(target, "the DAG to run")
    if not isinstance(obj, Dag) and callable(obj):
        try:
            inspect.signature(obj).bind(**params)
        except TypeError as exc:
            raise DagError(f"{target}: --param: {exc}") from None
        except ValueError:  # no signature to check (a builtin): the call will tell
            pass
        obj = obj(**params)
    elif params:
        raise DagError(f"{target} is a Dag, not a function: it takes no --param")
    if not isinstance(obj, Dag):
        raise DagError(f"{target} is a {type(obj).__name__}, not a Dag or a function making one")
    return obj


def _progress(job: Job, started: float) -> str:
    rows = job.status(timeout=1.0)
    per_node: dict[str, int] = {}
    for row in rows:
        per_node[row["node"]] = per_node.get(row["node"], 0) + row["records_in"]
    counts = " ".join(f"{node}={n:,}" for node, n in per_node.items())
    return f"[{time.monotonic() - started:6.1f}s] records in: {counts}"


def supervise(job: Job, *, quiet: bool = False) -> JobResult:
    """Wait for ``job``, printing progress to stderr once a second (until stderr is gone:
    closed, or its reader ended; the job goes on)."""
    started = time.monotonic()
    quiet = quiet or sys.stderr is None
    while True:
        try:
            return job.wait(timeout=PROGRESS_EVERY_S)
        except TimeoutError:
            if not quiet:
                try:
                    print(_progress(job, started), file=sys.stderr, flush=True)
                except OSError:  # BrokenPipeError: `2>&1 | head -1`
                    quiet = True


_last_sigterm = [-SAME_SIGTERM_S]  # _sigterm_clock() time of the last SIGTERM taken
_sigterm_clock = time.monotonic  # (a test's to replace)


def _repeated_sigterm() -> bool:
    """Whether a SIGTERM now repeats one taken within ``SAME_SIGTERM_S``; else it is taken."""
    now = _sigterm_clock()
    if now - _last_sigterm[0] < SAME_SIGTERM_S:
        return True
    _last_sigterm[0] = now
    return False


def _sigterm_as_interrupt(signum: int, frame: Any) -> None:
    if not _repeated_sigterm():
        raise KeyboardInterrupt


def _sigterm_as_ctrl_c(job: Job) -> Callable[[int, Any], None]:
    """SIGTERM to the Job's own Ctrl-C handler (also where SIGINT is ignored: a job started
    with `&`), save one that repeats another within ``SAME_SIGTERM_S``."""

    def on_sigterm(signum: int, frame: Any) -> None:
        if not _repeated_sigterm():
            job._on_sigint(signum, frame)

    return on_sigterm


def _restore_sigterm(previous: Any, exiting: bool) -> None:
    """On the way out of ``main``: SIGTERM's handler as ``main`` found it, except in a
    process about to exit that took a SIGTERM within ``SAME_SIGTERM_S``. Its twin may still
    be coming (``timeout`` sends two), and the interpreter, shutting down, puts SIGTERM back
    to its default (death); there it is ignored, which survives that."""
    if exiting and _sigterm_clock() - _last_sigterm[0] < SAME_SIGTERM_S:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    elif previous is not None and signal.getsignal(signal.SIGTERM) is not previous:
        # (None: set outside Python, not ours to put back; unchanged: main ran no job, and
        # may run off the main thread, where signal.signal raises)
        signal.signal(signal.SIGTERM, previous)


def execute(dag: Dag, settings: dict[str, Any], *, quiet: bool = False) -> JobResult:
    """Launch and supervise ``dag``. SIGTERM means what Ctrl-C means: once the job runs, the
    job's own handler takes both (a graceful stop; twice, a kill; two SIGTERMs within
    ``SAME_SIGTERM_S`` are one), and acts between the messages of its pipe, never in the
    middle of one."""
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)  # while launching
    job = launch(dag, **settings)
    signal.signal(signal.SIGTERM, _sigterm_as_ctrl_c(job))
    try:
        if settings.get("metrics_port") is not None and sys.stderr is not None:  # quiet too
            port = job.metrics_port  # the one bound, where --metrics-port 0 let it choose
            if port is not None:
                with contextlib.suppress(OSError):
                    print(f"metrics: http://127.0.0.1:{port}/metrics", file=sys.stderr)
        return supervise(job, quiet=quiet)
    finally:
        signal.signal(signal.SIGTERM, _sigterm_as_interrupt)


def engine_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The engine settings a command line gives: --linger, --metrics-port, --setting."""
    settings: dict[str, Any] = {"linger": args.linger, **dict(args.setting)}
    if args.metrics_port is not None:
        settings["metrics_port"] = args.metrics_port
    return settings


def add_setting_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--setting",
        action="append",
        type=_parse_param,
        default=[],
        metavar="KEY=VALUE",
        help="an engine setting, as launch() takes it (slots, slot_size, heartbeat_timeout, "
        "stop_grace, stop_timeout, startup_timeout; repeatable)",
    )


def _cmd_run(args: argparse.Namespace) -> int:
    dag = load_dag(args.target, dict(args.param))
    result = execute(dag, engine_settings(args), quiet=args.quiet)
    print(result.summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m engine",
        description="ringflow: run streaming DAGs across worker processes joined by "
        "shared-memory channels.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="run a DAG defined in a module",
        description="Run a DAG object, or a function that builds one, from an importable "
        "module. Prints progress to stderr while it runs and a summary at the end.",
    )
    run.add_argument("target", help="module:attribute, e.g. examples.minimal:build")
    run.add_argument(
        "--param",
        action="append",
        type=_parse_param,
        default=[],
        metavar="KEY=VALUE",
        help="keyword argument for the builder function (repeatable; values "
        "are Python literals or plain strings)",
    )
    run.add_argument(
        "--linger",
        type=float,
        default=DEFAULT_LINGER_S,
        help="longest time a record waits in a partial batch, seconds",
    )
    run.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics on 127.0.0.1:PORT while the job runs",
    )
    add_setting_argument(run)
    run.add_argument("--quiet", action="store_true", help="no progress lines")
    run.set_defaults(handler=_cmd_run)
    from engine.bars import add_bars_command

    add_bars_command(sub)
    return parser


def main(argv: list[str] | None = None, *, exiting: bool = False) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``) and return its exit status.
    ``exiting``: the process exits when this returns (``python -m engine``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    previous_sigterm = signal.getsignal(signal.SIGTERM)
    try:
        code: int = args.handler(args)
        return code
    except (DagError, RecordError, SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except JobFailed as exc:
        print(f"job failed: {exc}", file=sys.stderr)
        # A ringflow error (a bad row, a bad DAG found in a worker) says all in its message;
        # the worker's traceback is for errors raised in the job's own code.
        if exc.traceback and exc.error not in _SELF_EXPLAINING:
            print(f"--- remote traceback ({exc.node}[{exc.replica}]) ---", file=sys.stderr)
            print(exc.traceback.rstrip(), file=sys.stderr)
        return 1
    except RingflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        _restore_sigterm(previous_sigterm, exiting)
