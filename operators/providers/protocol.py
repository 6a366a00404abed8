"""The provider contract: what a market-data provider is, how its records become ``Tick``\\ s.

``MarketDataProvider`` is the part of ``market_data_core``'s protocol of the same name that
a tick source needs: ``stream_trades(instruments)``, an async stream of trades. That package
(and provider packages built on it, such as ``market_data_ibkr``) is optional: nothing here
imports it unless asked to, by a ``"module:attr"`` reference in a ``ProviderRef``.

A provider's records are converted by ``to_tick``: a ``Tick`` passes as it is; anything with
``symbol``, a time (``ts`` or ``timestamp``: int ns or a ``datetime``), a price (``price`` or
``last``: any real, ``Decimal`` included) and a size (``size`` or ``volume``) becomes one;
a quote without a last price is skipped.

Config and live objects are apart, as everywhere in ringflow: a provider *config*
(``ProviderRef`` here, ``Replay`` in ``operators.providers.replay``) is small, frozen and
picklable, and its ``build(timing)`` makes the live provider inside the source worker.
``ProviderHandle`` is the one place that talks to a live provider: it connects (``async
with`` when the provider is an async context manager), subscribes, converts and closes.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Iterable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from engine.errors import DagError, RingflowError
from engine.records import Tick
from engine.refs import import_ref
from operators.providers.timing import Timing

__all__ = [
    "MarketDataProvider",
    "ProviderConfig",
    "ProviderError",
    "ProviderFailure",
    "ProviderHandle",
    "ProviderRef",
    "ProvidersExhausted",
    "core_protocol",
    "resolve",
    "to_tick",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Where to get an optional package a reference names, for the ImportError message.
_INSTALL_HINTS = {
    "market_data_core": "pip install market-data-core",
    "market_data_ibkr": "pip install market-data-ibkr",
}


class ProviderError(RingflowError):
    """A market-data provider could not be built, reached or used."""


class ProviderFailure(ProviderError):
    """A provider failed (or was told to fail); transient: the source may try it again."""


class ProvidersExhausted(ProviderError):
    """A provider source gave up: too many consecutive attempts delivered no tick."""


@runtime_checkable
class MarketDataProvider(Protocol):
    """The tick stream of ``market_data_core.protocols.MarketDataProvider``.

    ``stream_trades`` takes instruments (``market_data_core.Instrument`` objects, or plain
    symbols for providers that accept them) and returns an async iterable of trades; it may
    be an async generator function or a coroutine returning the iterable. Providers may also
    be async context managers (entered around each subscription) and may have ``close()``.
    """

    def stream_trades(self, instruments: Iterable[Any]) -> AsyncIterable[Any]: ...


class ProviderConfig(Protocol):
    """What a provider source needs of a provider config: a name, and the live provider."""

    @property
    def name(self) -> str: ...

    def build(self, timing: Timing) -> ProviderHandle: ...


def core_protocol() -> type | None:
    """``market_data_core``'s ``MarketDataProvider`` protocol, or None when not installed."""
    try:
        module = importlib.import_module("market_data_core.protocols")
    except ImportError:
        return None
    return getattr(module, "MarketDataProvider", None)


def resolve(ref: str | Callable[..., Any], what: str) -> Callable[..., Any]:
    """A callable from a ``"module:attr"`` reference (imported now) or the callable itself."""
    if not isinstance(ref, str):
        if not callable(ref):
            raise DagError(f"{what} must be a 'module:attr' string or a callable, got {ref!r}")
        return ref
    if ":" not in ref:
        raise DagError(f"{what} must look like 'module:attr', got {ref!r}")
    package = ref.partition(":")[0].partition(".")[0]
    hint = _INSTALL_HINTS.get(package)
    obj = import_ref(ref, what, ProviderError, f"; it is optional: {hint}" if hint else "")
    if not callable(obj):
        raise ProviderError(f"{what} {ref!r} is a {type(obj).__name__}, not a callable")
    return obj


def ts_ns(value: Any) -> int:
    """Event time in ns since the epoch from int ns or a ``datetime`` (naive means UTC)."""
    if isinstance(value, int):
        return value
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        delta = value - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
    raise TypeError(f"expected int ns or a datetime for a trade's time, got {value!r}")


def _first(record: Any, *names: str) -> Any:
    for name in names:
        value = getattr(record, name, None)
        if value is not None:
            return value
    return None


def to_tick(record: Any) -> Tick | None:
    """A provider's trade (or quote) as a ``Tick``; None for a quote with no last price."""
    if type(record) is Tick:
        return record
    price = _first(record, "price", "last")
    if price is None:
        return None
    size = _first(record, "size", "volume")
    return Tick(
        record.symbol,
        ts_ns(_first(record, "ts", "timestamp")),
        float(price),
        float(size if size is not None else 0.0),
    )


class ProviderHandle:
    """A live provider as a provider source uses it (inside the worker, on its event loop).

    ``stream(symbols)`` is one subscription: it enters the provider when it is an async
    context manager, asks for ``method`` with the instruments (``instrument(symbol)`` each,
    or the symbols), and yields ``Tick``\\ s (``None`` for a record ``convert`` skipped).
    Leaving the stream (end, error or cancellation) closes the subscription and exits the
    context. ``aclose()`` calls the provider's ``close()``, if it has one, when the source
    ends.
    """

    def __init__(
        self,
        name: str,
        provider: Any,
        *,
        method: str = "stream_trades",
        instrument: Callable[[str], Any] | None = None,
        convert: Callable[[Any], Tick | None] = to_tick,
    ) -> None:
        if not callable(getattr(provider, method, None)):
            raise ProviderError(
                f"provider {name!r}: {type(provider).__name__} has no {method}() method, so it "
                "is not a MarketDataProvider (it needs stream_trades(instruments) -> an async "
                "iterable of trades)"
            )
        self.name = name
        self.provider = provider
        self.method = method
        self.instrument = instrument
        self.convert = convert

    async def stream(self, symbols: list[str]) -> AsyncGenerator[Tick | None, None]:
        async with AsyncExitStack() as stack:
            provider = self.provider
            if hasattr(provider, "__aenter__") and hasattr(provider, "__aexit__"):
                entered = await stack.enter_async_context(provider)
                provider = provider if entered is None else entered
            make = self.instrument
            instruments = list(symbols) if make is None else [make(s) for s in symbols]
            result = getattr(provider, self.method)(instruments)
            if inspect.isawaitable(result):
                result = await result
            items = aiter(result)
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                stack.push_async_callback(aclose)
            convert = self.convert
            async for record in items:
                yield convert(record)

    async def aclose(self) -> None:
        close = getattr(self.provider, "close", None)
        if close is not None:
            done = close()
            if inspect.isawaitable(done):
                await done


def _items(kwargs: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> tuple[tuple[str, Any], ...]:
    pairs = kwargs.items() if isinstance(kwargs, Mapping) else kwargs
    return tuple(sorted((str(k), v) for k, v in pairs))


@dataclass(frozen=True)
class ProviderRef:
    """A provider built in the worker by calling ``target(**kwargs)``.

    ``target``: ``"module:attr"`` (imported in the worker only, so optional packages stay
    optional: ``"market_data_ibkr:IBKRProvider"``) or a picklable callable (a class or a
    module-level function). ``instrument``: the same, to turn each symbol into what the
    provider expects (``"market_data_core:Instrument"`` is called as ``Instrument(symbol=s)``
    through ``instrument_kwarg``); None passes symbols as strings. ``method``: the stream to
    subscribe to (``stream_trades``; ``stream_quotes`` works too, quotes without a last price
    being skipped). ``convert``: a picklable function record -> ``Tick | None``.
    """

    name: str
    target: str | Callable[..., Any]
    kwargs: tuple[tuple[str, Any], ...] = field(default=())
    instrument: str | Callable[..., Any] | None = None
    instrument_kwarg: str | None = "symbol"
    method: str = "stream_trades"
    convert: Callable[[Any], Tick | None] = to_tick

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise DagError(f"a provider needs a non-empty name, got {self.name!r}")
        object.__setattr__(self, "kwargs", _items(self.kwargs))
        if not isinstance(self.target, str) and not callable(self.target):
            raise DagError(
                f"provider {self.name!r}: target must be 'module:attr' or a callable, "
                f"got {self.target!r}"
            )

    def build(self, timing: Timing) -> ProviderHandle:
        factory = resolve(self.target, f"provider {self.name!r} target")
        try:
            provider = factory(**dict(self.kwargs))
        except Exception as exc:
            raise ProviderError(
                f"provider {self.name!r}: {self.target!r}(**{dict(self.kwargs)!r}) raised "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        make: Callable[[str], Any] | None = None
        if self.instrument is not None:
            cls = resolve(self.instrument, f"provider {self.name!r} instrument")
            kwarg = self.instrument_kwarg
            make = cls if kwarg is None else _Keyword(cls, kwarg)
        return ProviderHandle(
            self.name, provider, method=self.method, instrument=make, convert=self.convert
        )


class _Keyword:
    """``cls(**{kwarg: symbol})``, as pydantic models such as ``Instrument`` want."""

    def __init__(self, cls: Callable[..., Any], kwarg: str) -> None:
        self.cls = cls
        self.kwarg = kwarg

    def __call__(self, symbol: str) -> Any:
        return self.cls(**{self.kwarg: symbol})
