from typing import Any

import numpy as np
import numpy.typing as npt

from features.stores.sqlite._sqlite import Database

class UpsertWriter:
    def __init__(self, db: Database, table: str) -> None: ...
    def write(
        self,
        keys: list[bytes],
        order: npt.NDArray[np.int64],
        names: list[str],
        columns: list[tuple[Any, ...]],
        event_s: npt.NDArray[np.int64],
        created_s: npt.NDArray[np.int64],
        has_created: npt.NDArray[np.uint8],
    ) -> int: ...
