from collections.abc import Sequence
from typing import Any

def encode(
    column: Sequence[Any], ids: dict[str, int], limit: int
) -> tuple[list[str], bytes] | None: ...
def take(table: list[str], indices: bytes) -> list[str]: ...
