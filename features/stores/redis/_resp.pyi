from typing import Any

import numpy as np
import numpy.typing as npt

KIND_NUMBER: int
KIND_TAGS: int
KIND_TS_SECONDS: int
KIND_TS_NANOS: int

class RespServerError(Exception): ...
class RespProtocolError(Exception): ...
class RespValueError(Exception): ...

class ReplyCounter:
    expected: int
    seen: int
    def __init__(self, expected: int) -> None: ...
    @property
    def done(self) -> bool: ...
    def feed(self, buf: bytearray, start: int, end: int) -> int: ...

class ReplyCollector:
    expected: int
    replies: list[Any]
    def __init__(self, expected: int) -> None: ...
    @property
    def done(self) -> bool: ...
    def feed(self, buf: bytearray, start: int, end: int) -> int: ...

class HmgetDecoder:
    rows: int
    row: int
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
