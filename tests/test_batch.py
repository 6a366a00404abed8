"""Batches on the wire: codecs, watermark frames and the producer-side ``BatchBuilder``.

Everything runs in one process that owns both ends of a channel; time is a manual clock.
The writer is opened with an ``on_wait`` that fails the test, so a test that would block
for credit (nobody reads concurrently here) fails after one wait slice instead of hanging.
"""

from __future__ import annotations

import contextlib
import pickle
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.batch import (
    MAX_BATCH,
    MIN_WATERMARK,
    WATERMARK_SIZE,
    BatchBuilder,
    MsgpackCodec,
    PickleCodec,
    codec_for,
    decode_watermark,
    encode_watermark,
)
from engine.channel import Channel, Reader, Writer
from engine.columns import Columns
from engine.errors import RecordError
from engine.records import Tick
from engine.ring import SLOT_HEADER_SIZE, Kind

T0 = 1_700_000_000_000_000_000  # ns; every ts from here on encodes as a 9-byte uint64
NO_LINGER = 3600.0  # seconds: with a manual clock that never gets there, only size flushes


class ManualClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _never_block() -> None:
    raise AssertionError("the writer waited for credit, but nobody reads in this test")


@contextlib.contextmanager
def _channel(slots: int = 64, slot_size: int = 4096) -> Iterator[tuple[Channel, Writer, Reader]]:
    with (
        Channel.create(slots=slots, slot_size=slot_size) as ch,
        ch.tx.open(on_wait=_never_block) as writer,
        ch.rx.open() as reader,
    ):
        yield ch, writer, reader


def _published(reader: Reader) -> list[tuple[int, bytes]]:
    """Every frame published so far, without blocking."""
    reader.pull()
    frames = []
    while (frame := reader.take()) is not None:
        frames.append((frame[0], bytes(frame[1])))
    reader.release()
    return frames


def _ticks(n: int, start: int = 0, symbol: str = "AAPL") -> list[Tick]:
    """Uniform ticks: every one encodes to the same number of bytes."""
    return [Tick(symbol, T0 + i, 187.25, 100.0) for i in range(start, start + n)]


def _batches(frames: list[tuple[int, bytes]], codec: Any) -> list[list[Any]]:
    assert all(kind == Kind.DATA for kind, _ in frames), [kind for kind, _ in frames]
    return [codec.decode(payload) for _, payload in frames]


# --- BatchBuilder -----------------------------------------------------------------------


def _measured(
    writer: Writer,
    reader: Reader,
    codec: Any,
    *,
    linger: float = NO_LINGER,
    clock: ManualClock | None = None,
    as_columns: bool = False,
) -> BatchBuilder:
    """A builder that has sent one frame of 10 ticks (so it knows their bytes per record:
    its target and limit are measured), that frame read off the channel."""
    builder = BatchBuilder(writer, codec, linger=linger, clock=clock or ManualClock())
    ticks = _ticks(10)
    builder.extend(Columns.from_rows(Tick, ticks) if as_columns else ticks)
    builder.flush()
    _published(reader)
    return builder


def test_flushes_when_batch_reaches_target() -> None:
    codec = MsgpackCodec(Tick)
    ticks = _ticks(300)
    with _channel() as (_, writer, reader):
        builder = BatchBuilder(writer, codec, linger=NO_LINGER, clock=ManualClock())
        assert builder.target == 256
        builder.extend(ticks[:255])
        assert _published(reader) == []
        builder.extend(ticks[255:])
        assert _batches(_published(reader), codec) == [ticks[:256]]
        assert builder.pending == 44
        builder.flush()
        assert _batches(_published(reader), codec) == [ticks[256:]]
        assert (builder.pending, builder.records_out, builder.frames_out) == (0, 300, 2)


class Spy:
    """A codec that keeps what it was asked to encode."""

    def __init__(self, codec: MsgpackCodec, encoded: list[Any]) -> None:
        self.codec = codec
        self.encoded = encoded

    def encode(self, batch: Any) -> bytes:
        self.encoded.append(batch)
        return self.codec.encode(batch)


def test_what_fits_one_slot_goes_as_one_frame_uncut() -> None:
    # The target is 90% of what fits a slot. A batch between the two is not cut at the
    # target (that would leave a sliver for a second frame): it goes whole, and a batch
    # that arrives that large into an empty builder goes without being copied into it.
    codec = MsgpackCodec(Tick)
    with _channel() as (_, writer, reader):
        builder = _measured(writer, reader, codec)
        target, limit = builder.target, builder.limit
        assert 0 < target < limit
        whole = _ticks(limit, start=10)
        encoded = []
        builder.codec = Spy(codec, encoded)
        builder.extend(whole)
        assert encoded == [whole] and encoded[0] is whole  # the caller's list, not a copy
        assert _batches(_published(reader), codec) == [whole]
        assert builder.pending == 0
        builder.extend(tuple(_ticks(limit, start=10)))  # type: ignore[arg-type]
        assert type(encoded[1]) is list  # any other sequence goes through the builder
        assert _batches(_published(reader), codec) == [whole]
        first, rest = _ticks(target - 1, start=1000), _ticks(limit - target + 1, start=2000)
        builder.extend(first)
        assert _published(reader) == []
        builder.extend(rest)  # target reached, still within a slot: one frame of all
        assert _batches(_published(reader), codec) == [first + rest]
        more = _ticks(limit + 1, start=5000)
        builder.extend(more)  # more than a slot: cut at the target
        assert _batches(_published(reader), codec) == [more[:target]]
        assert builder.pending == limit + 1 - target


@pytest.mark.parametrize("as_columns", [False, True])
def test_a_batch_of_many_slots_goes_in_frames_of_the_target_each_record_once(
    as_columns: bool,
) -> None:
    codec = MsgpackCodec(Tick)
    with _channel() as (_, writer, reader):
        builder = _measured(writer, reader, codec)
        target = builder.target
        rest = builder.limit - target + 1  # with a frame of target, more than a slot
        ticks = _ticks(20 * target + rest, start=10)
        builder.extend(Columns.from_rows(Tick, ticks) if as_columns else ticks)
        published = _published(reader)
        assert all(len(payload) <= writer.capacity for _, payload in published)  # one slot
        frames = [list(batch) for batch in _batches(published, codec)]
        sent = sum(len(frame) for frame in frames)
        if not as_columns:  # rows measure the same every frame; columns a little less
            assert [len(frame) for frame in frames] == [target] * 20
        assert [t for frame in frames for t in frame] == ticks[:sent]
        assert 0 < builder.pending == len(ticks) - sent < builder.target
        builder.flush()
        assert [list(b) for b in _batches(_published(reader), codec)] == [ticks[sent:]]


class FailingAt:
    """A codec that refuses the ``n``-th batch it is asked to encode."""

    def __init__(self, codec: MsgpackCodec, n: int) -> None:
        self.codec, self.n, self.calls = codec, n, 0

    def encode(self, batch: Any) -> bytes:
        self.calls += 1
        if self.calls == self.n:
            raise RecordError("refused")
        return self.codec.encode(batch)


def test_a_frame_that_fails_to_encode_is_not_kept_and_nothing_is_sent_twice() -> None:
    codec = MsgpackCodec(Tick)
    with _channel() as (_, writer, reader):
        builder = _measured(writer, reader, codec)
        target = builder.target
        ticks = _ticks(5 * target + 3, start=10)
        builder.codec = FailingAt(codec, 3)
        with pytest.raises(RecordError):
            builder.extend(ticks)
        assert _batches(_published(reader), codec) == [ticks[:target], ticks[target : 2 * target]]
        assert builder.pending == len(ticks) - 3 * target
        builder.codec = codec
        builder.flush()
        assert _batches(_published(reader), codec) == [ticks[3 * target :]]


class SendFailsAt:
    """A writer that refuses the ``n``-th frame it is asked to send."""

    def __init__(self, writer: Writer, n: int) -> None:
        self.writer, self.n, self.calls = writer, n, 0
        self.capacity = writer.capacity

    def send(self, kind: int, payload: Any, trailer: bytes = b"") -> None:
        self.calls += 1
        if self.calls == self.n:
            raise OSError("refused")
        self.writer.send(kind, payload, trailer=trailer)


@pytest.mark.parametrize("as_columns", [False, True])
@pytest.mark.parametrize("fails_at", ["first", "last"])
def test_a_frame_that_fails_to_send_is_not_kept_and_nothing_is_sent_twice(
    as_columns: bool, fails_at: str
) -> None:
    codec = MsgpackCodec(Tick)
    with _channel() as (_, writer, reader):
        builder = _measured(writer, reader, codec, as_columns=as_columns)
        target, limit = builder.target, builder.limit
        ticks = _ticks(2 * target + (limit - target), start=10)  # two frames of target, ...
        builder.writer = SendFailsAt(writer, 1 if fails_at == "first" else 2)  # type: ignore[assignment]
        with pytest.raises(OSError):
            builder.extend(Columns.from_rows(Tick, ticks) if as_columns else ticks)
        sent = [t for batch in _batches(_published(reader), codec) for t in batch]
        if fails_at == "first":  # the first frame lost, the rest still pending
            assert sent == [] and builder.pending == len(ticks) - builder.target
        else:  # the first went; the last frame (the rest, within a slot) lost
            assert sent == ticks[: len(sent)] and builder.pending == 0


def test_records_left_after_cutting_frames_linger_from_their_arrival() -> None:
    codec = MsgpackCodec(Tick)
    clock = ManualClock()
    with _channel() as (_, writer, reader):
        builder = _measured(writer, reader, codec, linger=0.002, clock=clock)
        target, limit = builder.target, builder.limit
        clock.now = 5.0
        builder.extend(_ticks(target + limit - target + 1, start=10))  # a frame and a rest
        assert 0 < builder.pending < target
        assert builder.due_in(5.0) == pytest.approx(0.002)
        assert not builder.due(5.001) and builder.due(5.0021)


def test_flushes_when_oldest_record_has_lingered() -> None:
    codec = MsgpackCodec(Tick)
    ticks = _ticks(20)
    clock = ManualClock()
    with _channel() as (_, writer, reader):
        builder = BatchBuilder(writer, codec, linger=0.005, clock=clock)
        builder.extend(ticks[:10])  # the oldest pending record arrives at t = 0
        clock.now = 0.004
        assert not builder.due(clock.now)
        builder.extend(ticks[10:12])  # linger counts from the oldest record, not this one
        assert _published(reader) == []
        clock.now = 0.005
        assert builder.due(clock.now)
        builder.extend(ticks[12:13])
        assert _batches(_published(reader), codec) == [ticks[:13]]
        assert not builder.due(clock.now)
        # With no new records, the caller polls ``due`` and flushes.
        builder.extend(ticks[13:20])
        clock.now = 0.0099
        assert not builder.due(clock.now)
        clock.now = 0.010
        assert builder.due(clock.now)
        builder.flush()
        assert _batches(_published(reader), codec) == [ticks[13:20]]


def test_flushes_records_before_watermark_and_eof() -> None:
    codec = MsgpackCodec(Tick)
    ticks = _ticks(8)
    with _channel() as (_, writer, reader):
        builder = BatchBuilder(writer, codec, linger=NO_LINGER, clock=ManualClock())
        builder.extend(ticks[:5])
        builder.send_watermark(T0 + 4)
        builder.send_watermark(T0 + 4)  # nothing pending: the watermark alone
        builder.extend(ticks[5:])
        builder.send_eof()
        frames = _published(reader)
    assert [kind for kind, _ in frames] == [
        Kind.DATA_WATERMARK,  # the records, then the watermark, in one frame
        Kind.WATERMARK,
        Kind.DATA,
        Kind.EOF,
    ]
    records, watermark = frames[0][1][:-WATERMARK_SIZE], frames[0][1][-WATERMARK_SIZE:]
    assert codec.decode(records) == ticks[:5]
    assert decode_watermark(watermark) == decode_watermark(frames[1][1]) == T0 + 4
    assert codec.decode(frames[2][1]) == ticks[5:]
    assert frames[3][1] == b""
    assert builder.frames_out == 2 and builder.records_out == 8


def test_a_watermark_riding_a_batch_larger_than_a_slot_arrives_with_it_whole() -> None:
    codec = MsgpackCodec(Tick)
    ticks = _ticks(50)
    with _channel(slots=64, slot_size=1024) as (ch, writer, reader):
        builder = BatchBuilder(writer, codec, linger=NO_LINGER, clock=ManualClock())
        builder.target = 1000  # more than a slot holds: the frame is split over slots
        builder.extend(ticks)
        builder.send_watermark(T0 + 49)
        assert ch.stats().sent_slots > 1
        [(kind, payload)] = _published(reader)
    assert kind == Kind.DATA_WATERMARK
    assert codec.decode(payload[:-WATERMARK_SIZE]) == ticks
    assert decode_watermark(payload[-WATERMARK_SIZE:]) == T0 + 49


@pytest.mark.parametrize("symbol_len", [4, 40, 400])
def test_adaptive_target_keeps_uniform_batches_within_one_slot(symbol_len: int) -> None:
    codec = MsgpackCodec(Tick)
    symbol = "S" * symbol_len
    sent: list[Tick] = []
    frames: list[tuple[int, bytes]] = []
    with _channel(slots=64, slot_size=4096) as (ch, writer, reader):
        builder = BatchBuilder(writer, codec, linger=NO_LINGER, clock=ManualClock())
        for chunk in range(10):
            ticks = _ticks(500, start=chunk * 500, symbol=symbol)
            sent += ticks
            builder.extend(ticks)
            frames += _published(reader)  # keep credits flowing
        builder.flush()
        frames += _published(reader)
        stats = ch.stats()
    sizes = [len(payload) for _, payload in frames]
    cap = 4096 - SLOT_HEADER_SIZE
    # The first batch uses the initial target of 256 records, sized before anything was
    # measured; every batch after it is sized from the bytes per record just seen.
    assert all(size <= cap for size in sizes[1:]), sizes
    assert stats.sent_slots == len(frames) - 1 + -(-sizes[0] // cap)
    assert 1 <= builder.target <= MAX_BATCH
    assert builder.target * len(codec.encode(sent[:1])) <= cap
    assert [t for batch in _batches(frames, codec) for t in batch] == sent


def test_record_larger_than_a_slot_is_split_not_refused() -> None:
    record = b"x" * 3000
    codec = PickleCodec()
    with _channel(slots=16, slot_size=256) as (ch, writer, reader):
        builder = BatchBuilder(writer, codec, linger=NO_LINGER, clock=ManualClock())
        builder.extend([record])
        builder.flush()
        frames = _published(reader)
        stats = ch.stats()
    assert _batches(frames, codec) == [[record]]
    cap = 256 - SLOT_HEADER_SIZE
    assert stats.sent_slots == -(-len(frames[0][1]) // cap) > 1
    assert builder.target == 1


def test_empty_extend_sends_nothing() -> None:
    with _channel() as (_, writer, reader):
        builder = BatchBuilder(writer, PickleCodec(), linger=0.0, clock=ManualClock())
        builder.extend([])
        builder.flush()
        assert _published(reader) == []
        assert not builder.due(1.0)


# --- codecs -----------------------------------------------------------------------------

_int64 = st.integers(-(2**63), 2**63 - 1)
_ticks_strategy = st.lists(
    st.builds(
        Tick,
        symbol=st.text(max_size=12),
        ts=_int64,
        price=st.floats(allow_nan=False),
        size=st.floats(allow_nan=False),
    ),
    max_size=50,
)


@settings(max_examples=100)
@given(ticks=_ticks_strategy)
def test_msgpack_codec_roundtrips_ticks(ticks: list[Tick]) -> None:
    codec = MsgpackCodec(Tick)
    payload = codec.encode(ticks)
    assert codec.decode(payload) == ticks
    assert codec.decode(memoryview(payload)) == ticks  # a slot's payload is a view
    assert pickle.loads(pickle.dumps(codec)).decode(payload) == ticks  # configs cross processes


def test_msgpack_codec_errors_name_the_record_type() -> None:
    codec = MsgpackCodec(Tick)
    wrong = PickleCodec().encode([])  # not msgpack at all
    with pytest.raises(RecordError, match=r"cannot decode a batch of .*Tick"):
        codec.decode(wrong)
    mistyped = MsgpackCodec(Any).encode([["AAPL", "noon", 1.0, 2.0]])
    with pytest.raises(RecordError, match=r"Expected `int`, got `str` - at `\$\[0\]\[1\]`"):
        codec.decode(mistyped)
    with pytest.raises(RecordError, match=r"cannot encode a batch of .*Tick"):
        codec.encode([object()])


_picklable = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text() | st.binary() | _ticks_strategy,
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner),
    max_leaves=10,
)


@settings(max_examples=50)
@given(records=st.lists(_picklable, max_size=20))
def test_pickle_codec_roundtrips_any_picklable(records: list[Any]) -> None:
    codec = PickleCodec()
    payload = codec.encode(records)
    assert codec.decode(payload) == records
    assert codec.decode(memoryview(payload)) == records


def test_pickle_codec_refuses_unpicklable_records() -> None:
    with pytest.raises(RecordError, match="cannot pickle a batch of records"):
        PickleCodec().encode([lambda: None])


def test_codec_for_edge_types() -> None:
    assert isinstance(codec_for(None), PickleCodec)
    codec = codec_for(Tick)
    assert isinstance(codec, MsgpackCodec) and codec.record_type is Tick


# --- watermarks -------------------------------------------------------------------------


@given(ts=_int64)
def test_watermark_roundtrips_any_int64(ts: int) -> None:
    payload = encode_watermark(ts)
    assert len(payload) == 8
    assert decode_watermark(payload) == decode_watermark(memoryview(payload)) == ts


def test_watermark_is_little_endian_int64() -> None:
    assert encode_watermark(1) == b"\x01" + bytes(7)
    assert encode_watermark(MIN_WATERMARK) == bytes(7) + b"\x80"
    assert decode_watermark(struct.pack("<q", -5)) == -5
