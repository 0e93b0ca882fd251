
import numpy as np
import numpy.typing as npt

AVAILABLE: bool
UNAVAILABLE_REASON: str
LIBRARY: tuple[str, int] | None
KIND_NUMBER: int
KIND_TAGS: int

class SqliteError(Exception):
    busy: bool
    def __init__(self, message: str, busy: bool = False) -> None: ...

class Database:
    path: str
    def __init__(self, path: str, readonly: bool = True, busy_timeout_ms: int = 500) -> None: ...
    def execute(self, sql: str) -> None: ...
    def close(self) -> None: ...

class BatchReader:
    def __init__(self, db: Database, tables: list[str], layouts: list[list[tuple[str, int, int]]]) -> None: ...
    def read(
        self,
        keys: list[bytes],
        matrix: npt.NDArray[np.float32],
        tags: npt.NDArray[np.uint8],
        view_ts: npt.NDArray[np.int64],
    ) -> int: ...
