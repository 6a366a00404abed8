"""Channels between real processes: what one process writes, another reads, whatever happens.

Forbidden outcomes, checked across processes (spawn context, like the engine):

* a frame lost, duplicated, reordered or altered, whatever the frame sizes, slot count and
  slot size (hypothesis against the list that was sent; a stress run of 1,000,000 records);
* a producer writing slot K+1 while the consumer has released nothing (backpressure), or
  the segment growing with the load;
* an input starved behind a busy one (``InputGate``);
* a peer that died or closed leaving the survivor blocked: it raises ``ChannelClosed``,
  never hangs, and every wait here is bounded (a hang fails as ``ChannelTimeout``);
* a segment left in /dev/shm or a child left running (the autouse ``no_leaks`` fixture).

Child targets are module-level so that spawn can import them; they fail by raising, which
gives a non-zero exit code the parent checks.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import struct
import threading
import time
import types
from array import array
from collections.abc import Callable, Iterator
from multiprocessing import reduction
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext, SpawnProcess
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.channel import Channel, InputGate, Reader, RxEnd, TxEnd, read_stats
from engine.errors import ChannelClosed, ChannelError, ChannelTimeout, FrameTooLarge
from engine.ring import C_SLOTS, HEADER_SIZE, P_SLOTS, SLOT_HEADER_SIZE, Kind, segment_path

TIMEOUT = 10.0  # bound on any single wait; only reached when something is broken
HANG_S = 60.0  # how long a child "hangs" before giving up on its own; tests kill it first
RECORDS = 1_000_000
_SEQ = struct.Struct("<q")
_TAGGED = struct.Struct("<iq")  # producer index, sequence number


# --- helpers ----------------------------------------------------------------------------


@contextlib.contextmanager
def _child(ctx: SpawnContext, target: Callable[..., None], *args: Any) -> Iterator[SpawnProcess]:
    """Run ``target(*args)`` in a spawned process; kill it if the test fails, else join it."""
    proc = ctx.Process(target=target, args=args, daemon=True)
    proc.start()
    try:
        yield proc
    except BaseException:
        proc.kill()
        proc.join(TIMEOUT)
        raise
    proc.join(TIMEOUT)
    if proc.is_alive():
        proc.kill()
        proc.join(TIMEOUT)
        raise AssertionError(f"{proc.name} ({target.__name__}) did not exit within {TIMEOUT} s")


def _wait_until(predicate: Callable[[], bool], what: str) -> None:
    """Poll ``predicate`` until it holds; fail after ``TIMEOUT`` seconds."""
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {TIMEOUT} s for {what}")
        time.sleep(0.002)


def _frames_until_eof(reader: Reader) -> list[tuple[int, bytes]]:
    frames = []
    while True:
        kind, payload = reader.recv(timeout=TIMEOUT)
        if kind == Kind.EOF:
            reader.release()
            return frames
        frames.append((kind, bytes(payload)))


def _seq(payload: bytes | memoryview) -> int:
    value: int = _SEQ.unpack(payload)[0]
    return value


def _slots_for(size: int, capacity: int) -> int:
    return max(1, -(-size // capacity))


# --- child targets ----------------------------------------------------------------------


def _send_frames(tx: TxEnd, frames: list[tuple[int, bytes]]) -> None:
    with tx.open() as writer:
        for kind, payload in frames:
            writer.send(kind, payload, timeout=TIMEOUT)
        writer.send(Kind.EOF, timeout=TIMEOUT)


def _frame_server(conn: Connection) -> None:
    """Producer for many channels in a row: one process for a whole hypothesis run.

    Each job is ``(name, slots, slot_size, frames)`` followed by the two producer-side pipe
    descriptors, passed over ``conn`` with SCM_RIGHTS; ``None`` ends the loop.
    """
    while (job := conn.recv()) is not None:
        name, slots, slot_size, frames = job
        doorbell = reduction.recv_handle(conn)
        credit = reduction.recv_handle(conn)
        _send_frames(TxEnd(name, slots, slot_size, doorbell, credit), frames)
        conn.send("sent")


def _stress_producer(tx: TxEnd, seed: int) -> None:
    """Send 0..RECORDS-1 as int64 batches of random sizes, pausing now and then."""
    rng = random.Random(seed)
    with tx.open() as writer:
        seq = 0
        while seq < RECORDS:
            n = min(rng.choice((rng.randint(1, 64), rng.randint(1, 6000))), RECORDS - seq)
            writer.send(Kind.DATA, array("q", range(seq, seq + n)).tobytes(), timeout=TIMEOUT)
            seq += n
            if rng.random() < 0.1:
                time.sleep(rng.random() * 0.003)
        writer.send(Kind.EOF, timeout=TIMEOUT)


def _fill_rounds(tx: TxEnd, conn: Connection, rounds: int, total: int) -> None:
    """Per round: on "go", send as many frames as go without waiting, then report whether
    one more times out. Afterwards send the rest up to ``total``, then EOF."""
    with tx.open() as writer:
        slots = writer.credits
        seq = 0
        for _ in range(rounds):
            assert conn.poll(TIMEOUT) and conn.recv() == "go"
            sent = 0
            with contextlib.suppress(ChannelTimeout):
                while sent <= slots:  # one past K: must not happen
                    writer.send(Kind.DATA, _SEQ.pack(seq), timeout=0)
                    seq += 1
                    sent += 1
            try:
                writer.send(Kind.DATA, _SEQ.pack(seq), timeout=0.2)
            except ChannelTimeout:
                blocked = True
            else:
                blocked = False
                seq += 1
            conn.send((sent, writer.credits, blocked))
        for i in range(seq, total):
            writer.send(Kind.DATA, _SEQ.pack(i), timeout=TIMEOUT)
        writer.send(Kind.EOF, timeout=TIMEOUT)


def _tagged_producer(tx: TxEnd, tag: int, count: int) -> None:
    with tx.open() as writer:
        for seq in range(count):
            writer.send(Kind.DATA, _TAGGED.pack(tag, seq), timeout=TIMEOUT)
        writer.send(Kind.EOF, timeout=TIMEOUT)


def _produce_forever(tx: TxEnd) -> None:
    with tx.open() as writer:
        for seq in itertools.count():
            writer.send(Kind.DATA, _SEQ.pack(seq), timeout=HANG_S)


def _send_then_hang(tx: TxEnd, conn: Connection, count: int) -> None:
    """Send ``count`` frames, then wait (for a SIGKILL) without closing anything."""
    with tx.open() as writer:
        for seq in range(count):
            writer.send(Kind.DATA, _SEQ.pack(seq), timeout=TIMEOUT)
        conn.poll(HANG_S)


def _open_then_hang(rx: RxEnd, conn: Connection) -> None:
    with rx.open():
        conn.send("ready")
        conn.poll(HANG_S)


def _take_then_close(rx: RxEnd, conn: Connection, count: int) -> None:
    """Take ``count`` frames, close the reader, and stay alive until told to go, so that
    only ``Reader.close`` (not the process exiting) can have told the producer."""
    reader = rx.open()
    for seq in range(count):
        kind, payload = reader.recv(timeout=TIMEOUT)
        assert (kind, _seq(payload)) == (Kind.DATA, seq)
    reader.close()
    conn.send("closed")
    conn.poll(TIMEOUT)


def _paced_producer(tx: TxEnd, conn: Connection, first: int, total: int) -> None:
    """Send ``first`` frames, wait for "go", send the rest and EOF."""
    with tx.open() as writer:
        for seq in range(total):
            if seq == first:
                assert conn.poll(TIMEOUT) and conn.recv() == "go"
            writer.send(Kind.DATA, _SEQ.pack(seq), timeout=TIMEOUT)
        writer.send(Kind.EOF, timeout=TIMEOUT)


def _checking_consumer(rx: RxEnd, total: int) -> None:
    with rx.open() as reader:
        for seq in range(total):
            kind, payload = reader.recv(timeout=TIMEOUT)
            assert (kind, _seq(payload)) == (Kind.DATA, seq)
        assert reader.recv(timeout=TIMEOUT)[0] == Kind.EOF


# --- ordering and integrity -------------------------------------------------------------


@st.composite
def _cases(draw: st.DrawFn) -> tuple[int, int, list[tuple[int, bytes]]]:
    slots = draw(st.integers(1, 6), label="slots")
    slot_size = draw(st.integers(8, 128), label="slot_size / 8") * 8
    cap = slot_size - SLOT_HEADER_SIZE
    edges = [0, 1, cap - 1, cap, cap + 1, 2 * cap, 2 * cap + 1, slots * cap, slots * cap + 1]
    size = st.one_of(st.integers(0, 4 * slot_size), st.sampled_from(edges))
    kind = st.sampled_from([Kind.DATA, Kind.WATERMARK, Kind.DATA_WATERMARK, Kind.BARRIER])
    specs = draw(st.lists(st.tuples(kind, size), max_size=24), label="frames")
    # Contents are random bytes seeded by position, so equal sizes still differ.
    frames = [
        (int(k), random.Random(i * 100_003 + n).randbytes(n)) for i, (k, n) in enumerate(specs)
    ]
    return slots, slot_size, frames


def test_frames_arrive_whole_and_in_order_for_any_geometry(spawn: SpawnContext) -> None:
    parent_conn, child_conn = spawn.Pipe()
    with parent_conn, _child(spawn, _frame_server, child_conn) as server:
        child_conn.close()

        @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(case=_cases())
        def check(case: tuple[int, int, list[tuple[int, bytes]]]) -> None:
            slots, slot_size, frames = case
            with Channel.create(slots=slots, slot_size=slot_size) as ch, ch.rx.open() as reader:
                doorbell, credit = ch.tx.take_fds()
                parent_conn.send((ch.name, slots, slot_size, frames))
                for fd in (doorbell, credit):
                    reduction.send_handle(parent_conn, fd, server.pid)
                    os.close(fd)
                got = _frames_until_eof(reader)
                assert parent_conn.poll(TIMEOUT) and parent_conn.recv() == "sent"
                stats = ch.stats()
            assert got == frames
            cap = slot_size - SLOT_HEADER_SIZE
            slots_used = sum(_slots_for(len(p), cap) for _, p in frames) + 1  # + EOF
            assert stats.sent_slots == stats.taken_slots == slots_used
            assert stats.sent_bytes == stats.taken_bytes == sum(len(p) for _, p in frames)

        check()
        parent_conn.send(None)
    assert server.exitcode == 0


def test_stress_million_records_with_random_pauses(spawn: SpawnContext) -> None:
    rng = random.Random(2)
    # 8 KiB per frame on average over 4 slots of 4 KiB: most frames split, many over K slots.
    with Channel.create(slots=4, slot_size=4096) as ch, ch.rx.open() as reader:
        with _child(spawn, _stress_producer, ch.tx, 1) as producer:
            ch.close_ends()
            expected = frames = 0
            while True:
                kind, payload = reader.recv(timeout=TIMEOUT)
                if kind == Kind.EOF:
                    reader.release()
                    break
                assert kind == Kind.DATA
                got = array("q")
                got.frombytes(payload)
                want = array("q", range(expected, expected + len(got)))
                if got != want:
                    at = next(i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b)
                    pytest.fail(f"frame {frames} record {at}: got {got[at]}, expected {want[at]}")
                expected += len(got)
                frames += 1
                if rng.random() < 0.1:
                    time.sleep(rng.random() * 0.003)
        assert producer.exitcode == 0
        assert expected == RECORDS
        stats = ch.stats()
        assert stats.sent_slots == stats.taken_slots
        assert stats.sent_bytes == stats.taken_bytes == RECORDS * 8


def test_frame_larger_than_a_slot_is_split_and_reassembled() -> None:
    with (
        Channel.create(slots=4, slot_size=256) as ch,
        ch.tx.open() as writer,
        ch.rx.open() as reader,
    ):
        cap = writer.capacity
        assert cap == 256 - SLOT_HEADER_SIZE
        sent = 0
        # A trailer ends its frame: written into the slot after the payload, or joined to it
        # when the frame needs several slots.
        for trailer in (b"", b"12345678"):
            for size, slots in [(8, 1), (cap, 1), (cap + 1, 2), (4 * cap, 4)]:
                frame = random.Random(size).randbytes(size)
                body = frame[: size - len(trailer)]
                before = ch.stats().sent_slots
                writer.send(Kind.DATA, body, trailer=frame[len(body) :], timeout=0)
                assert ch.stats().sent_slots - before == slots
                kind, payload = reader.recv(timeout=TIMEOUT)
                assert (kind, bytes(payload)) == (Kind.DATA, frame)
                reader.release()
                sent += size
        assert ch.stats().sent_bytes == sent


def test_frame_larger_than_a_slot_without_split_is_refused() -> None:
    with (
        Channel.create(slots=2, slot_size=64) as ch,
        ch.tx.open() as writer,
        ch.rx.open() as reader,
    ):
        writer.send(Kind.DATA, bytes(56), split=False, timeout=0)  # exactly one slot
        with pytest.raises(FrameTooLarge, match=r"57-byte frame does not fit a slot of 56"):
            writer.send(Kind.DATA, bytes(57), split=False, timeout=0)
        assert ch.stats().sent_slots == 1
        assert writer.credits == 1
        assert bytes(reader.recv(timeout=TIMEOUT)[1]) == bytes(56)


def test_split_frame_interrupted_midway_poisons_the_writer() -> None:
    # Two slots of a three-slot frame went out; anything sent after them would reach the
    # consumer glued onto them, as one frame that was never sent.
    with Channel.create(slots=2, slot_size=64) as ch, ch.rx.open() as reader:
        with ch.tx.open() as writer:
            with pytest.raises(ChannelTimeout):
                writer.send(Kind.DATA, bytes(150), timeout=0.01)
            with pytest.raises(ChannelError, match="split frame was interrupted"):
                writer.send(Kind.DATA, b"next", timeout=0)
        with pytest.raises(ChannelClosed, match="without sending EOF"):
            reader.recv(timeout=TIMEOUT)


def test_split_frame_refused_before_its_first_slot_can_be_sent_again() -> None:
    with (
        Channel.create(slots=3, slot_size=64) as ch,
        ch.tx.open() as writer,
        ch.rx.open() as reader,
    ):
        for seq in range(3):
            writer.send(Kind.DATA, _SEQ.pack(seq), timeout=0)
        big = random.Random(0).randbytes(150)  # three slots
        with pytest.raises(ChannelTimeout):
            writer.send(Kind.DATA, big, timeout=0.01)  # no slot free: nothing went out
        assert [_seq(reader.recv(timeout=TIMEOUT)[1]) for _ in range(3)] == [0, 1, 2]
        reader.release()
        writer.send(Kind.DATA, big, timeout=0)
        assert bytes(reader.recv(timeout=TIMEOUT)[1]) == big


# --- backpressure -----------------------------------------------------------------------


def test_consumer_that_stops_reading_blocks_producer_after_k_slots(spawn: SpawnContext) -> None:
    slots, slot_size, rounds, total = 3, 256, 2, 200
    parent_conn, child_conn = spawn.Pipe()
    with (
        parent_conn,
        Channel.create(slots=slots, slot_size=slot_size) as ch,
        ch.rx.open() as reader,
        _child(spawn, _fill_rounds, ch.tx, child_conn, rounds, total) as producer,
    ):
        child_conn.close()
        ch.close_ends()
        segment = segment_path(ch.name)
        assert os.stat(segment).st_size == HEADER_SIZE + slots * slot_size
        blocked_ns = 0
        for r in range(rounds):
            parent_conn.send("go")
            assert parent_conn.poll(TIMEOUT)
            assert parent_conn.recv() == (slots, 0, True)  # K sent without waiting, K+1 refused
            stats = ch.stats()
            assert (stats.sent_slots, stats.taken_slots) == ((r + 1) * slots, r * slots)
            assert stats.in_use == slots
            assert stats.backpressured_ns >= blocked_ns + 100_000_000  # >= half the 0.2 s
            blocked_ns = stats.backpressured_ns
            for i in range(slots):
                kind, payload = reader.recv(timeout=TIMEOUT)
                assert (kind, _seq(payload)) == (Kind.DATA, r * slots + i)
            reader.release()
        got = [_seq(p) for _, p in _frames_until_eof(reader)]
        assert got == list(range(rounds * slots, total))
        assert os.stat(segment).st_size == HEADER_SIZE + slots * slot_size
    assert producer.exitcode == 0


# --- many inputs ------------------------------------------------------------------------


def test_input_gate_serves_every_input_in_turn(spawn: SpawnContext) -> None:
    inputs, slots, count = 3, 4, 150
    with contextlib.ExitStack() as stack:
        channels = [
            stack.enter_context(Channel.create(slots=slots, slot_size=64)) for _ in range(inputs)
        ]
        readers = [stack.enter_context(ch.rx.open()) for ch in channels]
        procs = [
            stack.enter_context(_child(spawn, _tagged_producer, ch.tx, i, count))
            for i, ch in enumerate(channels)
        ]
        for ch in channels:
            ch.close_ends()
        # Every producer has filled its K slots and is blocked: all inputs are busy at once.
        _wait_until(
            lambda: all(ch.stats().sent_slots == slots for ch in channels),
            "every producer to fill its slots",
        )
        gate = InputGate(readers)
        stack.callback(gate.close)
        order: list[tuple[int, int]] = []
        eofs = []
        while not gate.done:
            got = gate.next(timeout=TIMEOUT)
            assert got is not None, f"no frame in {TIMEOUT} s; got {len(order)} so far"
            i, kind, payload = got
            if kind == Kind.EOF:
                eofs.append(i)
                continue
            tag, seq = _TAGGED.unpack(payload)
            assert tag == i
            order.append((tag, seq))
        # While all were busy, each round of `inputs` frames took one from every input.
        for r in range(slots):
            served = sorted(tag for tag, _ in order[r * inputs : (r + 1) * inputs])
            assert served == list(range(inputs)), f"round {r}: {order[: slots * inputs]}"
        for tag in range(inputs):
            assert [seq for t, seq in order if t == tag] == list(range(count))
        assert sorted(eofs) == list(range(inputs))
    assert [p.exitcode for p in procs] == [0] * inputs


def test_input_gate_raises_when_an_input_dies(spawn: SpawnContext) -> None:
    sent_before_death = 5
    parent_conn, child_conn = spawn.Pipe()
    with contextlib.ExitStack() as stack:
        stack.enter_context(parent_conn)
        live = stack.enter_context(Channel.create(slots=4, slot_size=64))
        dying = stack.enter_context(Channel.create(slots=4, slot_size=64))
        readers = [stack.enter_context(ch.rx.open()) for ch in (live, dying)]
        # 3 frames + EOF fit the live input's 4 slots: its producer never blocks, so it exits
        # even though the gate stops reading when the other input dies.
        stack.enter_context(_child(spawn, _tagged_producer, live.tx, 0, 3))
        victim = stack.enter_context(
            _child(spawn, _send_then_hang, dying.tx, child_conn, sent_before_death)
        )
        child_conn.close()
        live.close_ends()
        dying.close_ends()
        gate = InputGate(readers)
        stack.callback(gate.close)
        from_victim = 0
        with pytest.raises(ChannelClosed, match="died without sending EOF"):
            for _ in range(100):
                got = gate.next(timeout=TIMEOUT)
                assert got is not None, f"no frame and no error in {TIMEOUT} s"
                if got[0] == 1:
                    from_victim += 1
                    if from_victim == sent_before_death:
                        victim.kill()
        assert from_victim == sent_before_death


# --- a peer that dies or closes ---------------------------------------------------------


def test_producer_killed_mid_stream(spawn: SpawnContext) -> None:
    slots = 4
    with Channel.create(slots=slots, slot_size=64) as ch:
        name = ch.name
        with ch.rx.open() as reader, _child(spawn, _produce_forever, ch.tx) as producer:
            ch.close_ends()
            for seq in range(3 * slots):
                assert _seq(reader.recv(timeout=TIMEOUT)[1]) == seq
            producer.kill()
            producer.join(TIMEOUT)
            seq = 3 * slots
            with pytest.raises(ChannelClosed, match="died without sending EOF"):
                for _ in range(slots + 1):  # at most K frames were in flight
                    assert _seq(reader.recv(timeout=TIMEOUT)[1]) == seq
                    seq += 1
    assert not os.path.exists(segment_path(name))


def test_producer_killed_while_consumer_waits(spawn: SpawnContext) -> None:
    parent_conn, child_conn = spawn.Pipe()
    with parent_conn, Channel.create(slots=4, slot_size=64) as ch:
        name = ch.name
        with ch.rx.open() as reader, _child(spawn, _send_then_hang, ch.tx, child_conn, 2) as proc:
            child_conn.close()
            ch.close_ends()
            assert [_seq(reader.recv(timeout=TIMEOUT)[1]) for _ in range(2)] == [0, 1]
            killer = threading.Timer(0.1, proc.kill)  # lands while recv sleeps in poll
            killer.start()
            try:
                with pytest.raises(ChannelClosed, match="died without sending EOF"):
                    reader.recv(timeout=TIMEOUT)
            finally:
                killer.cancel()
                killer.join()
    assert not os.path.exists(segment_path(name))


def test_consumer_killed_while_producer_blocked(spawn: SpawnContext) -> None:
    slots = 4
    parent_conn, child_conn = spawn.Pipe()
    kills: list[SpawnProcess] = []

    def kill_consumer() -> None:  # called by the blocked writer every WAIT_SLICE_S
        if not kills:
            kills.append(consumer)
            consumer.kill()

    with parent_conn, Channel.create(slots=slots, slot_size=64) as ch:
        name = ch.name
        with (
            _child(spawn, _open_then_hang, ch.rx, child_conn) as consumer,
            ch.tx.open(on_wait=kill_consumer) as writer,
        ):
            child_conn.close()
            ch.close_ends()
            assert parent_conn.poll(TIMEOUT) and parent_conn.recv() == "ready"
            for seq in range(slots):
                writer.send(Kind.DATA, _SEQ.pack(seq), timeout=0)
            with pytest.raises(ChannelClosed, match="consumer closed its end or died"):
                writer.send(Kind.DATA, _SEQ.pack(slots), timeout=TIMEOUT)
            assert kills, "the writer raised before it blocked"
            assert ch.stats().backpressured_ns > 0
    assert not os.path.exists(segment_path(name))


@pytest.mark.parametrize("taken", [0, 3], ids=["blocked-on-credit", "writing-doorbell"])
def test_closed_consumer_makes_producer_raise(spawn: SpawnContext, taken: int) -> None:
    # taken=0: the producer has no credit and finds the credit pipe closed;
    # taken=K: it has credit back and finds the doorbell pipe closed.
    slots = 3
    parent_conn, child_conn = spawn.Pipe()
    with (
        parent_conn,
        Channel.create(slots=slots, slot_size=64) as ch,
        ch.tx.open() as writer,
        _child(spawn, _take_then_close, ch.rx, child_conn, taken) as consumer,
    ):
        child_conn.close()
        ch.close_ends()
        for seq in range(slots):
            writer.send(Kind.DATA, _SEQ.pack(seq), timeout=0)
        assert parent_conn.poll(TIMEOUT) and parent_conn.recv() == "closed"
        with pytest.raises(ChannelClosed, match="consumer closed its end or died"):
            writer.send(Kind.DATA, _SEQ.pack(slots), timeout=TIMEOUT)
        assert consumer.is_alive()
        parent_conn.send("bye")
    assert consumer.exitcode == 0


def test_producer_closed_without_eof_is_reported_after_its_frames() -> None:
    with Channel.create(slots=4, slot_size=64) as ch, ch.rx.open() as reader:
        with ch.tx.open() as writer:
            for seq in range(3):
                writer.send(Kind.DATA, _SEQ.pack(seq), timeout=0)
        assert [_seq(reader.recv(timeout=TIMEOUT)[1]) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(ChannelClosed, match="closed its end or died without sending EOF"):
            reader.recv(timeout=TIMEOUT)


def test_idle_time_grows_while_consumer_waits() -> None:
    wait_s = 0.05
    with Channel.create(slots=2, slot_size=64) as ch, ch.tx.open(), ch.rx.open() as reader:
        assert ch.stats().idle_ns == 0
        idle = []
        for _ in range(2):
            with pytest.raises(ChannelTimeout, match=f"no frame within {wait_s} s"):
                reader.recv(timeout=wait_s)
            idle.append(ch.stats().idle_ns)
        # poll() never returns early without an event, so each wait adds about wait_s.
        assert idle[0] >= wait_s / 2 * 1e9
        assert idle[1] >= idle[0] + wait_s / 2 * 1e9


# --- statistics -------------------------------------------------------------------------


def test_owner_reads_stats_while_peers_run(spawn: SpawnContext) -> None:
    slots, first, total = 4, 10, 300
    parent_conn, child_conn = spawn.Pipe()
    with parent_conn, Channel.create(slots=slots, slot_size=64) as ch:
        with (
            _child(spawn, _paced_producer, ch.tx, child_conn, first, total) as producer,
            _child(spawn, _checking_consumer, ch.rx, total) as consumer,
        ):
            child_conn.close()
            ch.close_ends()
            # The producer pauses after `first` frames: the owner sees the consumer catch up,
            # then wait, its idle time growing, while both peers are alive.
            _wait_until(lambda: ch.stats().taken_slots == first, f"the consumer to take {first}")
            paused = ch.stats()
            assert (paused.sent_slots, paused.sent_bytes) == (first, first * 8)
            assert (paused.taken_bytes, paused.in_use) == (first * 8, 0)
            _wait_until(lambda: ch.stats().idle_ns > paused.idle_ns, "the idle time to grow")
            assert producer.is_alive() and consumer.is_alive()
            parent_conn.send("go")
            previous = paused
            deadline = time.monotonic() + TIMEOUT
            while consumer.is_alive() and time.monotonic() < deadline:
                now = ch.stats()
                for field in ("sent_slots", "sent_bytes", "taken_slots", "taken_bytes", "idle_ns"):
                    assert getattr(now, field) >= getattr(previous, field), field
                # Not >= 0: the producer counts a slot after ringing the doorbell, so the
                # consumer may release it first. Never more than K, though.
                assert now.in_use <= slots
                previous = now
                consumer.join(0.001)
        assert (producer.exitcode, consumer.exitcode) == (0, 0)
        end = ch.stats()
    assert end.sent_slots == end.taken_slots == total + 1  # + EOF
    assert end.sent_bytes == end.taken_bytes == total * 8
    assert end.idle_ns > paused.idle_ns


class _MovingCounters:
    """A ring's counters while both ends move: after every read the producer publishes a
    slot and the consumer takes one (so in truth one slot at most is ever in use)."""

    def __init__(self) -> None:
        self.values = {P_SLOTS: 5, C_SLOTS: 5}

    def __getitem__(self, index: int) -> int:
        value = self.values.get(index, 0)
        self.values[P_SLOTS] += 1
        self.values[C_SLOTS] += 1
        return value


def test_stats_read_while_both_ends_move_stay_within_the_slots() -> None:
    """The consumer's count is read before the producer's: read the other way round, a
    reader paused between the two reads saw the consumer pass the producer (in_use < 0)."""
    ring = types.SimpleNamespace(slots=4, slot_size=1024, counters=_MovingCounters())
    stats = read_stats(ring)  # type: ignore[arg-type]
    assert stats.sent_slots >= stats.taken_slots
    assert 0 <= stats.in_use <= stats.slots
