"""Memory of the bars job, and what a stalled sink does to it.

Both launch the job and sample ``/proc/<pid>/status`` of the coordinator and every worker
(``Job.pids``) every ``SAMPLE_S`` from this process:

* ``peak_rss``: the throughput job (``benchmarks.engines.bars_dag``) to its end. Per
  worker: ``VmHWM`` (the kernel's peak resident set; the last reading before the worker
  exits, so growth in its final ``SAMPLE_S`` may be missed). For the job: the largest sum
  of ``VmRSS`` over one sample, and of ``RssAnon`` (private memory). ``VmRSS`` counts
  shared-memory ring pages in every process that maps them, so the first sum overstates.
* ``stall``: the same DAG on an endless generator with ``benchmarks.probes.StallSink``.
  Phases: running, stalled (the flag file exists: every sink write waits), resumed. The
  job's memory should stay flat while stalled, the source's output should stop (credits
  run out all the way back) and restart on resume. ``flat`` compares the largest job RSS
  in the stall with the job RSS ``SETTLE_S`` into it (in-flight batches land first);
  ``held_back`` is the source's rate in the stall, after ``SETTLE_S``, below 1% of the
  rate before it.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

from benchmarks.common import Workload, read_status_kb
from benchmarks.engines import bars_dag
from benchmarks.probes import StallSink, Timed
from engine.dag import Dag
from engine.job import Job, launch
from operators import OHLCV, Tumbling, WindowAggregate

SAMPLE_S = 0.05
SETTLE_S = 1.0
FLAT_TOLERANCE = 0.05  # a stall may grow job RSS by 5% at most, after settling


def _names(job: Job) -> dict[int, str]:
    """pid -> ``node[replica]`` for every worker, plus the coordinator."""
    names = {row["pid"]: f"{row['node']}[{row['replica']}]" for row in job.status()}
    if job.coordinator_pid is not None:
        names[job.coordinator_pid] = "coordinator"
    return names


def _sample(pids: list[int]) -> tuple[int, int, dict[int, int]]:
    """(sum VmRSS kB, sum RssAnon kB, pid -> VmHWM kB) of the pids still alive."""
    rss = anon = 0
    hwm: dict[int, int] = {}
    for pid in pids:
        kb = read_status_kb(pid, "VmRSS", "RssAnon", "VmHWM")
        if kb is None:
            continue
        rss += kb["VmRSS"]
        anon += kb["RssAnon"]
        hwm[pid] = kb["VmHWM"]
    return rss, anon, hwm


def peak_rss(work: Workload, replicas: int, sources: int) -> dict[str, Any]:
    job = launch(bars_dag(work, replicas, sources))
    with job:
        while not job.pids and not job.done():
            time.sleep(SAMPLE_S)
        names = _names(job)
        pids = list(names)
        top_rss = top_anon = 0
        hwm: dict[int, int] = {}
        while not job.done():
            rss, anon, seen = _sample(pids)
            top_rss, top_anon = max(top_rss, rss), max(top_anon, anon)
            hwm.update(seen)
            time.sleep(SAMPLE_S)
        job.wait()
    return {
        "bench": "memory",
        "engine": "ringflow",
        "replicas": replicas,
        "sources": sources,
        "ticks": work.ticks,
        "job_peak_rss_mb": round(top_rss / 1024, 1),
        "job_peak_anon_mb": round(top_anon / 1024, 1),
        "worker_peak_rss_mb": {names[pid]: round(kb / 1024, 1) for pid, kb in hwm.items()},
    }


def stall_dag(work: Workload, replicas: int, flag: str) -> Dag:
    dag = Dag("bench-stall")
    ticks = dag.source("ticks", Timed(work.generator(count=None)))
    aggregate = WindowAggregate(Tumbling(work.window_ns), OHLCV(), late_output=None)
    bars = ticks.key_by("symbol").apply("bars", aggregate, replicas)
    bars.sink("out", StallSink(flag), replicas)
    return dag


def stall(
    work: Workload, replicas: int, run_s: float, stall_s: float
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The summary row and the time series (one dict per sample)."""
    series: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ringflow-bench-stall-") as tmp:
        flag = os.path.join(tmp, "stall")
        # Liveness comes from the async sink's heartbeat; the long timeout is a safety net.
        job = launch(stall_dag(work, replicas, flag), heartbeat_timeout=120.0)
        with job:
            while not job.pids and not job.done():
                time.sleep(SAMPLE_S)
            pids = list(_names(job))
            t0 = time.monotonic()
            phases = [("running", run_s), ("stalled", stall_s), ("resumed", run_s)]
            for phase, length in phases:
                if phase == "stalled":
                    open(flag, "w").close()
                elif phase == "resumed":
                    os.unlink(flag)
                end = time.monotonic() + length
                while time.monotonic() < end and not job.done():
                    rss, anon, _ = _sample(pids)
                    rows = job.status()
                    ticks = sum(r["records_out"] for r in rows if r["node"] == "ticks")
                    series.append(
                        {
                            "t": round(time.monotonic() - t0, 3),
                            "phase": phase,
                            "job_rss_mb": round(rss / 1024, 2),
                            "job_anon_mb": round(anon / 1024, 2),
                            "source_ticks": ticks,
                        }
                    )
                    time.sleep(SAMPLE_S * 2)
            job.stop()
            job.wait(timeout=60)
    return _summarise(series, replicas, run_s, stall_s), series


def _rate(points: list[dict[str, Any]]) -> float:
    if len(points) < 2:
        return 0.0
    dt = points[-1]["t"] - points[0]["t"]
    return (points[-1]["source_ticks"] - points[0]["source_ticks"]) / dt if dt > 0 else 0.0


def _summarise(
    series: list[dict[str, Any]], replicas: int, run_s: float, stall_s: float
) -> dict[str, Any]:
    def phase(name: str) -> list[dict[str, Any]]:
        return [p for p in series if p["phase"] == name]

    running, stalled, resumed = phase("running"), phase("stalled"), phase("resumed")
    stall_start = stalled[0]["t"] if stalled else 0.0
    settled = [p for p in stalled if p["t"] >= stall_start + SETTLE_S]
    before = _rate(running[len(running) // 2 :])
    during = _rate(settled)
    after = _rate(resumed[len(resumed) // 2 :])
    base = settled[0]["job_rss_mb"] if settled else 0.0
    peak = max((p["job_rss_mb"] for p in stalled), default=0.0)
    growth = max((p["job_rss_mb"] for p in settled), default=0.0) - base
    return {
        "bench": "stall",
        "engine": "ringflow",
        "replicas": replicas,
        "run_s": run_s,
        "stall_s": stall_s,
        "rss_running_mb": max((p["job_rss_mb"] for p in running), default=0.0),
        "rss_stall_settled_mb": base,
        "rss_stall_peak_mb": peak,
        "rss_stall_growth_mb": round(growth, 2),
        "rss_resumed_mb": max((p["job_rss_mb"] for p in resumed), default=0.0),
        "source_ticks_per_s_running": round(before),
        "source_ticks_per_s_stalled": round(during),
        "source_ticks_per_s_resumed": round(after),
        "flat": bool(settled) and growth <= FLAT_TOLERANCE * max(base, 1.0),
        "held_back": bool(settled) and during <= 0.01 * before,
        "recovered": after >= 0.5 * before,
    }
