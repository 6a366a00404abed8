"""``ProviderRegistry``: named provider configs, and provider sources made from them.

A pipeline names its providers once (``"ibkr"``, ``"replay-a"``...) and builds sources by
name, so the same registry can feed several sources, each with its own failover order::

    registry = ProviderRegistry.of(
        ProviderRef("ibkr", "market_data_ibkr:IBKRProvider", ...),
        Replay("backup", "ticks.csv"),
    )
    dag.source("ticks", registry.source("ibkr", "backup", symbols=("AAPL", "MSFT")))

The registry is itself a frozen config: ``add`` returns a new one, and it pickles, so it may
travel inside other configs. Nothing is imported or connected until a source's worker
builds its providers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from engine.errors import DagError
from operators.providers.protocol import ProviderConfig, ProviderRef
from operators.providers.source import ProviderSource

__all__ = ["ProviderRegistry"]


@dataclass(frozen=True)
class ProviderRegistry:
    """Provider configs by name, in the order they were added."""

    providers: tuple[ProviderConfig, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "providers", tuple(self.providers))
        seen: set[str] = set()
        for provider in self.providers:
            name = getattr(provider, "name", None)
            if not isinstance(name, str) or not callable(getattr(provider, "build", None)):
                raise DagError(f"{provider!r} is not a provider config (a name and build())")
            if name in seen:
                raise DagError(f"provider {name!r} is registered twice; names must be unique")
            seen.add(name)

    @classmethod
    def of(cls, *providers: ProviderConfig) -> ProviderRegistry:
        return cls(providers)

    def add(self, provider: ProviderConfig) -> ProviderRegistry:
        """A registry with ``provider`` added (its name must be new)."""
        return ProviderRegistry((*self.providers, provider))

    def add_ref(
        self, name: str, target: str | Callable[..., Any], **kwargs: Any
    ) -> ProviderRegistry:
        """A registry with ``ProviderRef(name, target, kwargs)`` added."""
        return self.add(ProviderRef(name, target, tuple(kwargs.items())))

    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.providers)

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def __iter__(self) -> Iterator[ProviderConfig]:
        return iter(self.providers)

    def __len__(self) -> int:
        return len(self.providers)

    def __getitem__(self, name: str) -> ProviderConfig:
        for provider in self.providers:
            if provider.name == name:
                return provider
        raise DagError(
            f"no provider named {name!r} in the registry; registered: "
            f"{', '.join(repr(n) for n in self.names()) or 'none'}"
        )

    def source(self, *names: str, **options: Any) -> ProviderSource:
        """A ``ProviderSource`` over the named providers, in that priority order (all of
        them, in registration order, when none are named); ``options`` are its fields."""
        chosen = [self[n] for n in names] if names else list(self.providers)
        if not chosen:
            raise DagError("the registry is empty: add providers before making a source")
        return ProviderSource(tuple(chosen), **options)
