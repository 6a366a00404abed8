from collections.abc import Sequence
from typing import Any

def pack(column: Sequence[Any], code: str) -> bytes | None: ...
