from collections.abc import Callable
from typing import Any, overload

@overload
def window(
    bucket: dict[Any, Any],
    initial: Callable[[], Any],
    times: Any,
    keys: Any,
    prices: Any,
    sizes: Any,
) -> int: ...
@overload
def window(
    bucket: dict[Any, Any],
    initial: Callable[[], Any],
    times: Any,
    keys: Any,
    prices: Any,
    sizes: Any,
    first: int,
    lo: int,
    hi: int,
) -> int: ...
