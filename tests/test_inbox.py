"""``Inbox``: messages from a connection handed on whole, never waiting for the rest."""

from __future__ import annotations

import os
import pickle
from multiprocessing import Pipe
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.inbox import Inbox


def _framed(message: Any, long_header: bool = False) -> bytes:
    """The bytes ``Connection.send`` writes; ``long_header``: the form it uses past 2 GiB."""
    data = pickle.dumps(message)
    if long_header:
        return (-1).to_bytes(4, "big", signed=True) + len(data).to_bytes(8, "big") + data
    return len(data).to_bytes(4, "big", signed=True) + data


@pytest.fixture
def pipe():
    reader, writer = Pipe(duplex=False)
    yield reader, writer
    reader.close()
    writer.close()


def test_a_message_half_written_waits_for_the_rest_without_blocking(pipe):
    """A sender frozen halfway through a large message (a sink's result) used to block the
    coordinator's event loop, watchdog included, in Connection.recv."""
    reader, writer = pipe
    inbox, got = Inbox(reader), []
    frame = _framed(("done", b"x" * 300_000))
    os.write(writer.fileno(), frame[:40_000])  # the frozen sender's part
    inbox.receive(got.append)  # returns at once: nothing whole yet
    assert got == [] and inbox.partial == 40_000
    view = memoryview(frame)[40_000:]
    while view:  # the rest, as the sender resumes (more than a pipe holds: read as it goes)
        view = view[os.write(writer.fileno(), view[:60_000]) :]
        inbox.receive(got.append)
    assert got == [("done", b"x" * 300_000)] and inbox.partial == 0


def test_messages_from_connection_send_arrive_whole_and_in_order(pipe):
    reader, writer = pipe
    inbox, got = Inbox(reader), []
    messages = [("ready",), ("counters", {"late": 3}, {}), ("done", list(range(1000)))]
    for message in messages:
        writer.send(message)
    inbox.receive(got.append)
    assert got == messages


def test_the_long_header_form_is_read_too(pipe):
    reader, writer = pipe
    inbox, got = Inbox(reader), []
    os.write(writer.fileno(), _framed(("big",), long_header=True) + _framed(("next",)))
    inbox.receive(got.append)
    assert got == [("big",), ("next",)]


def test_a_closed_peer_ends_with_eof_after_its_whole_messages(pipe):
    reader, writer = pipe
    inbox, got = Inbox(reader), []
    os.write(writer.fileno(), _framed(("done", 1)) + _framed(("cut",))[:5])
    writer.close()
    with pytest.raises(EOFError, match="5 byte"):
        inbox.receive(got.append)
    assert got == [("done", 1)]


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.text(max_size=3), st.binary(max_size=200)), max_size=6),
    st.lists(st.integers(1, 97), min_size=1, max_size=20),
)
def test_any_split_of_the_byte_stream_gives_the_same_messages(messages, cuts):
    """However the bytes arrive (one read per piece), the messages come out as sent."""
    reader, writer = Pipe(duplex=False)
    try:
        inbox, got = Inbox(reader), []
        stream = b"".join(_framed(m, long_header=i % 2 == 1) for i, m in enumerate(messages))
        at, i = 0, 0
        while at < len(stream):
            piece = stream[at : at + cuts[i % len(cuts)]]
            os.write(writer.fileno(), piece)
            inbox.receive(got.append)
            at, i = at + len(piece), i + 1
        assert got == messages and inbox.partial == 0
    finally:
        reader.close()
        writer.close()


def test_a_message_that_does_not_unpickle_is_dropped_and_the_next_one_comes(pipe):
    reader, writer = pipe
    inbox, got = Inbox(reader), []
    os.write(writer.fileno(), (4).to_bytes(4, "big") + b"junk")  # "invalid load key"
    os.write(writer.fileno(), _framed(("next",)))
    with pytest.raises(pickle.UnpicklingError):
        inbox.receive(got.append)
    inbox.receive(got.append)
    assert got == [("next",)] and inbox.partial == 0
