"""Market-data provider sources: the provider protocol, a replay provider, failover between
providers, circuit breakers and shared request budgets.

``market_data_core`` (and provider packages such as ``market_data_ibkr``) are optional: a
``ProviderRef("ibkr", "market_data_ibkr:IBKRProvider", ...)`` imports them in the worker
only. Implementation lives in one small module per concept; this package re-exports the
public names, and ``__all__`` lists them (a test pins it).
"""

from operators.providers.breaker import Breaker, BreakerState, CircuitBreaker
from operators.providers.failover import FailoverRouter
from operators.providers.overlap import OverlapFilter
from operators.providers.protocol import (
    MarketDataProvider,
    ProviderError,
    ProviderFailure,
    ProviderHandle,
    ProviderRef,
    ProvidersExhausted,
    core_protocol,
    to_tick,
)
from operators.providers.ratelimit import RateBudget, TokenBucket
from operators.providers.registry import ProviderRegistry
from operators.providers.replay import Fail, Replay, ReplayProvider, Stall
from operators.providers.source import ProviderSource
from operators.providers.timing import REAL_TIME, RealTime, Timing, VirtualTime

__all__ = [
    "REAL_TIME",
    "Breaker",
    "BreakerState",
    "CircuitBreaker",
    "Fail",
    "FailoverRouter",
    "MarketDataProvider",
    "OverlapFilter",
    "ProviderError",
    "ProviderFailure",
    "ProviderHandle",
    "ProviderRef",
    "ProviderRegistry",
    "ProviderSource",
    "ProvidersExhausted",
    "RateBudget",
    "RealTime",
    "Replay",
    "ReplayProvider",
    "Stall",
    "Timing",
    "TokenBucket",
    "VirtualTime",
    "core_protocol",
    "to_tick",
]
