from typing import Any

import numpy as np
import numpy.typing as npt

KIND_NUMBER: int
KIND_TAGS: int
KIND_TS_SECONDS: int
KIND_TS_NANOS: int
MAX_BULK_LEN: int
MAX_LINE_LEN: int
MAX_NESTING: int
MAX_ARRAY_LEN: int
MAX_COLLECTED: int

class RespServerError(Exception): ...
class RespProtocolError(Exception): ...
class RespValueError(Exception): ...

class ReplyCounter:
    expected: int
    seen: int
    need: int
    def __init__(self, expected: int) -> None: ...
    @property
    def done(self) -> bool: ...
    def feed(self, buf: bytearray, start: int, end: int) -> int: ...

class ReplyCollector:
    expected: int
    need: int
    max_items: int
    replies: list[Any]
    def __init__(self, expected: int, max_items: int = ...) -> None: ...
    @property
    def done(self) -> bool: ...
    def feed(self, buf: bytearray, start: int, end: int) -> int: ...

class HmgetDecoder:
    rows: int
    row: int
    need: int
    def __init__(
        self,
        kinds: npt.NDArray[np.int32],
        cols: npt.NDArray[np.int32],
        matrix: npt.NDArray[np.float32],
        tags: npt.NDArray[np.uint8],
        ts: npt.NDArray[np.int64],
    ) -> None: ...
    @property
    def done(self) -> bool: ...
    def feed(self, buf: bytearray, start: int, end: int) -> int: ...
