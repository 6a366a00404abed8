"""ringflow's operators: transforms, event-time windows, aggregations and market plumbing.

Implementation lives in one small module per concept; this package re-exports the public
names, and ``__all__`` lists them (a test pins it).
"""

from operators.aggregations import OHLCV, Aggregation, Count, Vwap, WindowValue
from operators.assigners import Session, Sliding, Tumbling
from operators.basic import Filter, FlatMap, Map
from operators.durations import parse_duration
from operators.market import Dedupe, Router, Throttle
from operators.memstore import MemoryStore
from operators.providers import ProviderSource, Replay
from operators.sinks import Collect, CountSink, CsvBars, CsvTicksSink, JsonLinesBars
from operators.sources import CsvTicks, Generator, generate
from operators.store import StoreSink, WriteCoordinatorFactory
from operators.windows import WindowAggregate

__all__ = [
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
    "MemoryStore",
    "ProviderSource",
    "Replay",
    "Router",
    "Session",
    "Sliding",
    "StoreSink",
    "Throttle",
    "Tumbling",
    "Vwap",
    "WindowAggregate",
    "WindowValue",
    "WriteCoordinatorFactory",
    "generate",
    "parse_duration",
]
