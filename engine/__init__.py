"""ringflow's engine: describe a DAG, launch it across worker processes, wait for the result.

The public API is what ``__all__`` lists; everything else is internal and may change.
"""

from engine.columns import Columns
from engine.dag import Dag, Stream
from engine.errors import (
    ChannelClosed,
    ChannelError,
    ChannelTimeout,
    DagError,
    FrameTooLarge,
    JobFailed,
    RecordError,
    RingflowError,
    SettingsError,
    StoreError,
)
from engine.job import Job, launch, run
from engine.operator import (
    ANY_KEY,
    ONE_STATE,
    STATELESS,
    Context,
    Files,
    Operator,
    OperatorLogic,
    Sink,
    SinkLogic,
    Source,
    SourceLogic,
    Watermark,
)
from engine.records import Bar, Tick
from engine.result import JobResult, NodeReport
from engine.runtime import PipelineRuntime

__all__ = [
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
    "PipelineRuntime",
    "RecordError",
    "RingflowError",
    "SettingsError",
    "Sink",
    "SinkLogic",
    "Source",
    "SourceLogic",
    "StoreError",
    "Stream",
    "Tick",
    "Watermark",
    "launch",
    "run",
]
