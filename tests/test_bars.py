"""The bars job end to end: the command line, against a brute-force reference."""

from __future__ import annotations

import csv
import random
import signal
import subprocess
import sys
from collections import defaultdict

import pytest

from engine.bars import bars_dag
from engine.cli import main
from engine.testing import run_inline

WAIT = 120
SECOND = 1_000_000_000


def _write_ticks(path, rows):
    with open(path, "w") as f:
        f.write("symbol,ts,price,size\n")
        for symbol, ts, price, size in rows:
            f.write(f"{symbol},{ts},{price},{size}\n")


def _ticks(n=12_000, seed=7, disorder=SECOND // 2):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        ts = 1_700_000_000 * SECOND + i * 5_000_000 - rng.randrange(disorder)
        if rng.random() < 0.03:
            ts -= 10 * SECOND  # a straggler, far behind the watermark
        rows.append((f"S{rng.randrange(12)}", ts, round(rng.uniform(10, 20), 2), rng.randint(1, 9)))
    return rows


def _reference(rows, window, lateness, batch=4096):
    """Bars and late ticks by the definitions, in file order; the source's watermark
    (max event time - lateness) moves after each batch of ``batch`` rows."""
    state = defaultdict(list)
    late = []
    high = None
    watermark = None
    for i, row in enumerate(rows):
        symbol, ts = row[0], row[1]
        start = ts - ts % window
        if watermark is not None and start + window <= watermark:
            late.append(row)
        else:
            state[(symbol, start)].append(row)
        high = ts if high is None else max(high, ts)
        if (i + 1) % batch == 0:
            watermark = high - lateness
    bars = {}
    for (symbol, start), ticks in state.items():
        order = sorted(range(len(ticks)), key=lambda i: (ticks[i][1], i))
        volume = sum(t[3] for t in ticks)
        bars[(symbol, start)] = (
            ticks[order[0]][2],
            max(t[2] for t in ticks),
            min(t[2] for t in ticks),
            ticks[order[-1]][2],
            volume,
            sum(t[2] * t[3] for t in ticks) / volume,
            len(ticks),
        )
    return bars, late


def _read_bars(path):
    with open(path) as f:
        reader = csv.reader(f)
        header = next(reader)
        assert header == [
            "symbol",
            "window_start",
            "window_end",
            "open",
            "high",
            "low",
            "close",
            "volume",
            "vwap",
            "count",
        ]
        out = {}
        for r in reader:
            key = (r[0], int(r[1]))
            assert key not in out
            assert int(r[2]) - int(r[1]) == SECOND
            out[key] = (*map(float, r[3:9]), int(r[9]))
        return out


def _same(bars, reference):
    assert bars.keys() == reference.keys()
    for key, got in bars.items():
        want = reference[key]
        assert got[:5] == pytest.approx(want[:5]) and got[6] == want[6], key
        assert got[5] == pytest.approx(want[5], rel=1e-12), key


def test_bars_command_matches_the_reference(tmp_path, capsys):
    rows = _ticks()
    src = tmp_path / "ticks.csv"
    _write_ticks(src, rows)
    out, late = tmp_path / "bars.csv", tmp_path / "late.csv"
    code = main(
        [
            "bars",
            str(src),
            "--output",
            str(out),
            "--window",
            "1s",
            "--lateness",
            "200ms",
            "--replicas",
            "2",
            "--late-output",
            str(late),
            "--quiet",
        ]
    )
    assert code == 0
    bars, late_ref = _reference(rows, SECOND, SECOND // 5)
    assert late_ref, "the data should have late ticks"
    _same(_read_bars(out), bars)
    with open(late) as f:
        late_rows = list(csv.reader(f))
    assert late_rows[0] == ["symbol", "ts", "price", "size"]
    assert sorted((r[0], int(r[1])) for r in late_rows[1:]) == sorted(
        (r[0], r[1]) for r in late_ref
    )
    summary = capsys.readouterr().out
    assert f"ticks in {len(rows):,}" in summary and f"late {len(late_ref):,}" in summary


def test_bars_inline_equals_multiprocess(tmp_path):
    rows = _ticks(2000, seed=3)
    src = tmp_path / "ticks.csv"
    _write_ticks(src, rows)
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    sigterm = signal.getsignal(signal.SIGTERM)
    assert main(["bars", str(src), "--output", str(a), "--replicas", "3", "--quiet"]) == 0
    assert signal.getsignal(signal.SIGTERM) == sigterm  # main leaves its caller's as it was
    run_inline(bars_dag(str(b), input=str(src), replicas=3))
    assert _read_bars(a) == _read_bars(b)


def test_bad_row_stops_the_job_with_file_and_line(tmp_path, capsys):
    src = tmp_path / "ticks.csv"
    src.write_text("symbol,ts,price,size\nA,1,10.0,1\nA,2,oops,1\n")
    out = tmp_path / "bars.csv"
    assert main(["bars", str(src), "--output", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"{src}:3:" in err and "price" in err and "--dead-letter" in err
    assert "Traceback" not in err  # the message says it all: no worker traceback after it
    assert not out.exists()


def test_dead_letter_keeps_bad_rows_and_goes_on(tmp_path, capsys):
    src = tmp_path / "ticks.csv"
    src.write_text("symbol,ts,price,size\nA,1,10.0,1\nA,2,oops,1\n,3,1.0,1\nA,4,11.0,2\n")
    out, bad = tmp_path / "bars.csv", tmp_path / "bad.csv"
    assert main(["bars", str(src), "--output", str(out), "--dead-letter", str(bad), "--quiet"]) == 0
    with open(bad) as f:
        dead = list(csv.reader(f))
    assert dead[0] == ["line", "raw", "reason"]
    assert [r[0] for r in dead[1:]] == ["3", "4"]
    out_text = capsys.readouterr().out
    assert "bad rows 2" in out_text and f"bad rows to {bad}" in out_text
    assert _read_bars(out)[("A", 0)][-1] == 2


def test_bad_command_line_is_refused_before_starting(tmp_path, capsys):
    assert main(["bars", str(tmp_path / "missing.csv"), "--output", str(tmp_path / "o.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--linger", "-1", "linger must be >= 0"),
        ("--metrics-port", "70000", "metrics_port"),
        ("--setting", "slotz=4", "the settings are slots, slot_size"),
        ("--setting", "heartbeat_timeout=0", "heartbeat_timeout must be > 0"),
        ("--setting", "heartbeat_timeout=10s", "heartbeat_timeout must be > 0 seconds, got '10s'"),
    ],
)
def test_bad_settings_on_the_command_line_are_a_bad_command_line(
    tmp_path, capsys, flag, value, message
):
    argv = ["bars", "--generate", "10", "--output", str(tmp_path / "o.csv"), flag, value]
    assert main([*argv, "--quiet"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()


@pytest.mark.parametrize(
    "flag", ["--late-output", "--dead-letter", "--output"], ids=["late", "dead", "input"]
)
def test_an_output_path_shared_with_another_or_the_input_is_refused(tmp_path, capsys, flag):
    """Else one file would replace the other: bars lost, or the input overwritten."""
    src = tmp_path / "ticks.csv"
    src.write_text("symbol,ts,price,size\nA,1,10.0,1\n")
    out = tmp_path / "bars.csv"
    other = src if flag == "--output" else out
    argv = ["bars", str(src), "--output", str(out), flag, str(other), "--quiet"]
    assert main(argv) == 2
    assert "give each node its own path" in capsys.readouterr().err
    assert src.read_text() == "symbol,ts,price,size\nA,1,10.0,1\n" and not out.exists()


def test_a_file_name_for_run_is_answered_with_the_module_name(capsys):
    assert main(["run", "examples/minimal.py:build", "--quiet"]) == 2
    assert "not a file's path: examples.minimal" in capsys.readouterr().err
    assert main(["run", "/abs/examples/minimal.py:build", "--quiet"]) == 2
    assert "put that folder on PYTHONPATH), not a file's path\n" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:  # argparse's own way out
        main(["run", "examples.minimal:build", "--setting", "slots", "--quiet"])
    assert info.value.code == 2
    assert "argument --setting: want KEY=VALUE, got 'slots'" in capsys.readouterr().err


def test_a_bad_param_for_run_is_refused(capsys):
    assert main(["run", "examples.minimal:build", "--param", "bogus=1", "--quiet"]) == 2
    assert "unexpected keyword argument 'bogus'" in capsys.readouterr().err


def test_help_documents_the_commands():
    out = subprocess.run(
        [sys.executable, "-m", "engine", "--help"],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=True,
    ).stdout
    assert "bars" in out and "run" in out


@pytest.mark.parametrize("replicas", [1, 4])
def test_generated_bars_match_the_reference_and_every_tick_is_accounted(tmp_path, replicas):
    from engine import run
    from operators import generate

    params = dict(
        symbols=50, count=30_000, seed=11, disorder_ns=300_000_000, lateness_ns=100_000_000
    )
    out, late = tmp_path / "bars.csv", tmp_path / "late.csv"
    dag = bars_dag(
        str(out),
        generate=params["count"],
        symbols=50,
        seed=11,
        disorder="300ms",
        lateness="100ms",
        replicas=replicas,
        late_output=str(late),
    )
    result = run(dag, timeout=WAIT)
    rows = [(t.symbol, t.ts, t.price, t.size) for t in generate(**params)]
    bars, late_ref = _reference(rows, SECOND, 100_000_000)
    assert late_ref, "disorder beyond the lateness bound should make late ticks"
    got = _read_bars(out)
    _same(got, bars)
    late_count = result.counter("late")
    assert late_count == len(late_ref)
    in_bars = sum(bar[-1] for bar in got.values())
    assert result.nodes["ticks"].records_out == in_bars + late_count + result.counter("bad_rows")
    with open(late) as f:
        assert sum(1 for _ in f) - 1 == late_count
