"""Batches on the wire: codecs for DATA frames and the producer-side batch builder.

A DATA frame's payload is one encoded batch: a list of records, or an
``engine.columns.Columns`` batch. Typed edges (the upstream node declares a
``msgspec.Struct`` record type) use msgspec msgpack with a typed decoder, which is the fast
path: a list of records is a msgpack array of records, a Columns batch a map ``{"c": [one
array per field]}``, each column decoded with its field's type (string columns may go
dictionary-encoded, ``engine.strings``; int and float columns packed, 8 bytes a value,
``engine.numbers``). Untyped edges fall back to
pickle, which carries any picklable record (and Columns). WATERMARK payloads are one
little-endian int64 (event time in ns); EOF is empty.

``BatchBuilder`` collects records for one channel and flushes a frame when the batch is
full (its encoded size would about fill a slot), when the oldest record has waited
``linger`` seconds, or before any control frame, so a watermark never overtakes the
records it covers. A watermark that finds records pending rides in their last frame
(``DATA_WATERMARK``: the encoded batch, then the watermark as 8 bytes): the same order and
timing as a DATA frame followed by a WATERMARK frame, in one frame instead of two (one
doorbell, one credit, one turn of the consumer's loop). Records are appended a batch at a
time: the per-record work on this path is the encoder's, nothing else. Columns batches
stay columns (a frame holds either kind, so a switch of kind flushes first).
"""

from __future__ import annotations

import pickle
import random
import struct
import time
from collections.abc import Callable
from typing import Any

import msgspec

from engine import numbers, strings
from engine.channel import Writer
from engine.columns import Columns, field_names
from engine.errors import RecordError
from engine.ring import Kind

_WATERMARK = struct.Struct("<q")
WATERMARK_SIZE = _WATERMARK.size  # bytes of a watermark, alone or at a DATA_WATERMARK's end
MAX_BATCH = 8192  # records per frame, whatever their size
_AS_IS = (list, Columns)  # batches a frame may carry as they come (not a tuple, say)
# Longest a record waits in a partial batch. Under load batches fill (or a watermark flushes
# them) long before this; an idle worker sends at once. In between it bounds the latency
# each hop adds (a three-hop job at half load on 2 cores: median 1.35-2.4 ms; its tail is
# the machine's: benchmarks/RESULTS.md).
DEFAULT_LINGER_S = 0.002
MIN_WATERMARK = -(2**63)


def encode_watermark(ts: int) -> bytes:
    return _WATERMARK.pack(ts)


def decode_watermark(payload: bytes | memoryview) -> int:
    ts: int = _WATERMARK.unpack(payload)[0]
    return ts


class Codec:
    """Encodes a list of records to bytes and back."""

    def encode(self, records: list[Any] | Columns) -> bytes:
        raise NotImplementedError

    def decode(self, payload: bytes | memoryview) -> list[Any] | Columns:
        raise NotImplementedError


class MsgpackCodec(Codec):
    """msgspec msgpack with a typed decoder for ``list[record_type]``, and for Columns
    batches of it when ``record_type`` is a Struct.

    With ``dictionary`` (one codec per channel end: its tables follow the frames in order),
    the string columns of Columns batches are dictionary-encoded (``engine.strings``) when
    the C extension is built. Every instance decodes them.
    """

    def __init__(self, record_type: Any, *, dictionary: bool = False) -> None:
        self.record_type = record_type
        self.dictionary = dictionary
        self._encoder = msgspec.msgpack.Encoder()
        self._wire = _columns_wire_type(record_type)
        decoded: Any = list[record_type] if self._wire is None else list[record_type] | self._wire
        self._decoder = msgspec.msgpack.Decoder(decoded)
        self._strings = _string_columns(record_type) if self._wire is not None else ()
        self._numbers = _number_columns(record_type) if self._wire is not None else ()
        # Per string column, the encoder's table (None: plain, for good) and its id ...
        self._ids: list[dict[str, int] | None] = [None] * len(self._strings)
        self._table_ids = [0] * len(self._strings)
        if dictionary and strings.NATIVE:
            for k in range(len(self._strings)):
                self._new_table(k)
        # ... and the decoder's: the strings so far, and the id of the table they are.
        self._tables: list[list[str]] = [[] for _ in self._strings]
        self._tables_of = [0] * len(self._strings)

    def encode(self, records: list[Any] | Columns) -> bytes:
        try:
            if type(records) is Columns:
                if self._wire is None or records.type is not self.record_type:
                    raise TypeError(f"got a Columns batch of {records.type.__name__}")
                columns = list(records.data)  # what goes on the wire, column by column
                for i, code in self._numbers:
                    columns[i] = numbers.wire(columns[i], code)
                try:
                    self._encode_strings(columns)
                    return self._encoder.encode(self._wire(tuple(columns)))
                except BaseException:
                    # No frame: the tables took strings its consumer will never see, so the
                    # next frame starts new ones.
                    for k, ids in enumerate(self._ids):
                        if ids is not None:
                            self._new_table(k)
                    raise
            return self._encoder.encode(records)
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
            raise RecordError(f"cannot encode a batch of {self.record_type!r}: {exc}") from exc

    def _new_table(self, k: int) -> None:
        self._ids[k] = {}
        self._table_ids[k] = random.getrandbits(62)

    def _encode_strings(self, columns: list[Any]) -> None:
        """Dictionary-encode the string columns that have a table, in place."""
        for k, i in enumerate(self._strings):
            ids = self._ids[k]
            if ids is None:
                continue
            base = len(ids)
            encoded = strings.native_encode(columns[i], ids, strings.MAX_ENTRIES)
            if encoded is None:  # not all str (msgspec says what), or the table was full
                if base + len(columns[i]) > strings.MAX_ENTRIES:
                    self._ids[k] = None  # it does not repeat enough: as it is from now on
                continue
            columns[i] = strings.StrDict(self._table_ids[k], base, *encoded)

    def decode(self, payload: bytes | memoryview) -> list[Any] | Columns:
        try:
            batch = self._decoder.decode(payload)
        except msgspec.DecodeError as exc:
            raise RecordError(f"cannot decode a batch of {self.record_type!r}: {exc}") from exc
        if type(batch) is list:
            return batch
        columns = list(batch.c)
        for i, code in self._numbers:
            if type(columns[i]) is bytes:
                try:
                    columns[i] = numbers.unpack(columns[i], code)
                except ValueError as exc:
                    raise RecordError(
                        f"cannot decode a batch of {self.record_type!r}: column {i}: {exc}"
                    ) from exc
        self._decode_strings(columns)
        return Columns(self.record_type, columns)

    def _decode_strings(self, columns: list[Any]) -> None:
        """Turn the dictionary-encoded string columns back into strings, in place."""
        for k, i in enumerate(self._strings):
            column = columns[i]
            if type(column) is not strings.StrDict:
                continue
            table = self._tables[k]
            if not column.base:  # the encoder started a new table
                table.clear()
                self._tables_of[k] = column.table
            elif column.table != self._tables_of[k] or column.base != len(table):
                raise RecordError(
                    f"cannot decode a batch of {self.record_type!r}: its string column "
                    f"{i} extends a table of {column.base} strings this decoder does not "
                    f"have (it has {len(table)}): frames out of order, decoded twice, or "
                    "from two channels"
                )
            table.extend(column.new)
            try:
                columns[i] = _take(table, column.idx)
            except ValueError as exc:
                raise RecordError(f"cannot decode a batch of {self.record_type!r}: {exc}") from exc

    def __reduce__(self) -> tuple[Any, ...]:
        return (_msgpack_codec, (self.record_type, self.dictionary))


def _msgpack_codec(record_type: Any, dictionary: bool) -> MsgpackCodec:
    return MsgpackCodec(record_type, dictionary=dictionary)


_take = strings.native_take if strings.NATIVE else strings.take


class PickleCodec(Codec):
    """Any picklable record, at pickle's speed."""

    def encode(self, records: list[Any] | Columns) -> bytes:
        try:
            return pickle.dumps(records, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise RecordError(f"cannot pickle a batch of records: {exc}") from exc

    def decode(self, payload: bytes | memoryview) -> list[Any] | Columns:
        records: list[Any] | Columns = pickle.loads(payload)
        return records


def _string_columns(record_type: Any) -> tuple[int, ...]:
    """The positions of ``record_type``'s ``str`` fields."""
    return tuple(i for i, f in enumerate(msgspec.structs.fields(record_type)) if f.type is str)


def _number_columns(record_type: Any) -> tuple[tuple[int, str], ...]:
    """The positions of ``record_type``'s ``int`` and ``float`` fields, with their packed
    codes (``engine.numbers``)."""
    return tuple(
        (i, numbers.CODES[f.type])
        for i, f in enumerate(msgspec.structs.fields(record_type))
        if f.type in numbers.CODES
    )


def _columns_wire_type(record_type: Any) -> Any:
    """The msgspec type a Columns batch of ``record_type`` travels as (a map with one key,
    so it cannot be mistaken for a list of records), or None for a non-Struct type. A
    ``str`` column is a list or a ``StrDict``, an ``int`` or ``float`` column a list or
    packed bytes (``engine.numbers``)."""
    if not (isinstance(record_type, type) and issubclass(record_type, msgspec.Struct)):
        return None
    try:
        field_names(record_type)
    except Exception:
        return None  # keyword-only fields: lists of records only
    types = tuple(
        list[str] | strings.StrDict
        if f.type is str
        else list.__class_getitem__(f.type) | bytes
        if f.type in numbers.CODES
        else list.__class_getitem__(f.type)
        for f in msgspec.structs.fields(record_type)
    )
    return msgspec.defstruct(
        f"{record_type.__name__}Columns", [("c", tuple.__class_getitem__(types))], frozen=True
    )


def codec_for(record_type: Any | None, *, dictionary: bool = False) -> Codec:
    """The codec for an edge carrying ``record_type`` (None: untyped); ``dictionary`` for
    one channel's producer (``MsgpackCodec``)."""
    if record_type is None:
        return PickleCodec()
    return MsgpackCodec(record_type, dictionary=dictionary)


class BatchBuilder:
    """Collects records bound for one channel and sends them as DATA frames.

    The batch size adapts to the records: after each frame, ``limit`` is set to the records
    that fit one slot at the bytes per record just measured, and ``target`` to 90% of that
    (between 1 and ``MAX_BATCH``). Pending records are sent once they reach the target: all
    of them in one frame while they fit a slot, else in frames of ``target`` (headroom for
    records larger than those measured). So a source's batch that fits a slot goes whole,
    and into an empty builder it goes as it is, without being copied. A frame that still
    encodes larger than a slot is split over slots by the channel, so nothing is ever
    refused for size.
    """

    def __init__(
        self,
        writer: Writer,
        codec: Codec,
        *,
        linger: float = DEFAULT_LINGER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.writer = writer
        self.codec = codec
        self.linger = linger
        self._clock = clock
        self._pending: list[Any] = []  # records, or one list per field for columns
        self._columns: type | None = None  # the record type while columns are pending
        self._count = 0
        self._first_at = 0.0
        self.target = 256
        self.limit = 256  # records that fit one slot (target is 90% of that); 256 unmeasured
        self.records_out = 0
        self.bytes_out = 0
        self.frames_out = 0

    @property
    def pending(self) -> int:
        return self._count

    def extend(self, records: list[Any] | Columns) -> None:
        """Queue records; flush every time the batch reaches its target size."""
        n = len(records)
        if not n:
            return
        if not self._count and self.target <= n <= self.limit and type(records) in _AS_IS:
            self._send(records, n)  # a frame's worth already: sent as it is, not copied
            return
        if isinstance(records, Columns):
            if self._columns is not records.type:
                self.flush()
                self._columns = records.type
                self._pending = [[] for _ in records.data]
            for mine, more in zip(self._pending, records.data, strict=True):
                mine.extend(more)
        else:
            if self._columns is not None:
                self.flush()
            self._pending.extend(records)
        if not self._count:
            self._first_at = self._clock()
        self._count += n
        if self._count >= self.target:
            self._send_ready()
        if self._count and self._clock() - self._first_at >= self.linger:
            self.flush()

    def due_in(self, now: float) -> float:
        """Seconds until the oldest pending record has waited its linger (0 if it has)."""
        return max(0.0, self._first_at + self.linger - now) if self._count else self.linger

    def due(self, now: float) -> bool:
        """Whether the oldest pending record has waited its linger time."""
        return self._count > 0 and now - self._first_at >= self.linger

    def flush(self, *, watermark: bytes = b"") -> None:
        """Send every pending record now, in one frame; an encoded ``watermark`` (only with
        records pending: ``send_watermark`` sends it alone otherwise) ends that frame."""
        if self._count:
            pending, columns, n = self._pending, self._columns, self._count
            self._pending, self._columns, self._count = [], None, 0  # empty, of either kind
            batch = pending if columns is None else Columns(columns, pending)
            self._send(batch, n, watermark)

    def _send_ready(self) -> None:
        """Send frames while the pending records reach the target: all of them in one frame
        once they fit a slot, else ``target`` of them (90% of a slot: headroom for records
        larger than those measured). Each frame is cut from the pending records once, and
        what is left is kept once at the end: cutting the rest anew after every frame made a
        batch of N records cost N^2 / target copies (1 us a record at a million)."""
        pending, columns, count = self._pending, self._columns, self._count
        if count <= self.limit:
            self.flush()
            return
        arrived = self._clock()  # what is left waits its linger from here, not after the sends
        sent = 0
        try:
            while count - sent >= self.target:
                left = count - sent
                n = left if left <= self.limit else self.target
                end = sent + n
                batch: list[Any] | Columns = (
                    pending[sent:end]
                    if columns is None
                    else Columns(columns, [c[sent:end] for c in pending])
                )
                sent = end  # a frame that fails to go is not kept, as with flush
                self._send(batch, n)
        finally:
            if sent == count:
                self._pending, self._columns, self._count = [], None, 0
            elif sent:
                self._pending = pending[sent:] if columns is None else [c[sent:] for c in pending]
                self._count = count - sent
                self._first_at = arrived

    def _send(self, batch: list[Any] | Columns, n: int, watermark: bytes = b"") -> None:
        """Encode and send ``batch`` (``n`` records) as one frame; size the next ones."""
        payload = self.codec.encode(batch)
        size = len(payload)
        if watermark:
            self.writer.send(Kind.DATA_WATERMARK, payload, trailer=watermark)
        else:
            self.writer.send(Kind.DATA, payload)
        self.records_out += n
        self.bytes_out += size
        self.frames_out += 1
        per_record = size / n
        fit = int(self.writer.capacity / per_record) if per_record else MAX_BATCH
        self.limit = max(1, min(MAX_BATCH, fit))
        self.target = max(1, min(self.limit, int(fit * 0.9)))

    def send_watermark(self, ts: int) -> None:
        if self._count:
            self.flush(watermark=encode_watermark(ts))
        else:
            self.writer.send(Kind.WATERMARK, encode_watermark(ts))

    def send_eof(self) -> None:
        self.flush()
        self.writer.send(Kind.EOF)
