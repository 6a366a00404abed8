"""The curated public API: what each package exports is pinned here, so a change to it is
a deliberate one."""

from __future__ import annotations

import subprocess
import sys

import engine
import operators

ENGINE = {
    "ANY_KEY",
    "ONE_STATE",
    "STATELESS",
    "Bar",
    "ChannelClosed",
    "ChannelError",
    "ChannelTimeout",
    "Columns",
    "Context",
    "Dag",
    "DagError",
    "Files",
    "FrameTooLarge",
    "Job",
    "JobFailed",
    "JobResult",
    "NodeReport",
    "Operator",
    "OperatorLogic",
    "RecordError",
    "RingflowError",
    "SettingsError",
    "Sink",
    "SinkLogic",
    "Source",
    "SourceLogic",
    "Stream",
    "Tick",
    "Watermark",
    "launch",
    "run",
    "PipelineRuntime",
    "StoreError",
}
OPERATORS = {
    "ProviderSource",
    "Replay",
    "OHLCV",
    "Aggregation",
    "Collect",
    "Count",
    "CountSink",
    "CsvBars",
    "CsvTicks",
    "CsvTicksSink",
    "Dedupe",
    "Filter",
    "FlatMap",
    "Generator",
    "JsonLinesBars",
    "Map",
    "Router",
    "Session",
    "Sliding",
    "Throttle",
    "Tumbling",
    "Vwap",
    "WindowAggregate",
    "WindowValue",
    "generate",
    "parse_duration",
    "MemoryStore",
    "StoreSink",
    "WriteCoordinatorFactory",
}


def test_engine_exports_exactly_its_public_names():
    assert set(engine.__all__) == ENGINE
    for name in engine.__all__:
        assert hasattr(engine, name), name


def test_operators_exports_exactly_its_public_names():
    assert set(operators.__all__) == OPERATORS
    for name in operators.__all__:
        assert hasattr(operators, name), name


def test_every_error_is_a_ringflow_error():
    for name in (
        "ChannelClosed",
        "ChannelError",
        "ChannelTimeout",
        "DagError",
        "FrameTooLarge",
        "JobFailed",
        "RecordError",
        "SettingsError",
        "StoreError",
    ):
        assert issubclass(getattr(engine, name), engine.RingflowError)


def test_packages_import_in_any_order():
    for first in ("partitioning", "operators", "engine"):
        code = f"import {first}, engine, operators, partitioning"
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
