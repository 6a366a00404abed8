from collections.abc import Callable
from typing import Any

def window(
    bucket: dict[Any, Any],
    initial: Callable[[], Any],
    times: Any,
    keys: Any,
    prices: Any,
    sizes: Any,
    *span: int,  # none, or first, lo, hi
) -> int: ...
