"""The one exception tree of ringflow: every error the engine raises derives from RingflowError."""

from __future__ import annotations


class RingflowError(Exception):
    """Root of every error ringflow raises on purpose."""


class ChannelError(RingflowError):
    """A channel could not be created, attached or used."""


class ChannelClosed(ChannelError):
    """The other end of a channel has gone: closed normally, or its process died."""


class ChannelTimeout(ChannelError):
    """A bounded wait on a channel ran out before a frame or a credit arrived."""


class FrameTooLarge(ChannelError):
    """A frame does not fit the channel and splitting it was not allowed."""


class DagError(RingflowError):
    """A DAG is malformed; raised by validation before any process starts."""


class SettingsError(RingflowError):
    """Engine settings are unknown or out of range; raised before any process starts."""


class RecordError(RingflowError):
    """A record could not be parsed or encoded; the message names where it came from."""


class StoreError(RingflowError):
    """A store behind a sink could not be built, refused work, or did not drain in time."""


class JobFailed(RingflowError):
    """A job stopped because one of its workers failed.

    Carries the failing node and replica, the exception's type and message, and the
    traceback as text, as the worker reported it (or the exit code / signal when the
    worker died without reporting).
    """

    def __init__(
        self,
        message: str,
        *,
        node: str | None = None,
        replica: int | None = None,
        error: str | None = None,
        traceback: str | None = None,
        exitcode: int | None = None,
    ) -> None:
        super().__init__(message)
        self.node = node
        self.replica = replica
        self.error = error
        self.traceback = traceback
        self.exitcode = exitcode

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_job_failed,
            (str(self), self.node, self.replica, self.error, self.traceback, self.exitcode),
        )


def _rebuild_job_failed(
    message: str,
    node: str | None,
    replica: int | None,
    error: str | None,
    traceback: str | None,
    exitcode: int | None,
) -> JobFailed:
    return JobFailed(
        message, node=node, replica=replica, error=error, traceback=traceback, exitcode=exitcode
    )
