from collections.abc import Sequence
from typing import Any

def split_columns(
    keys: Sequence[Any],
    cache: dict[Any, int],
    parallelism: int,
    columns: tuple[Sequence[Any], ...],
) -> list[tuple[list[Any], ...] | None] | None: ...
