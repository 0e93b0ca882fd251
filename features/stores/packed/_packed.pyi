import numpy as np
import numpy.typing as npt

KIND_NUMBER: int
KIND_TAGS: int
KIND_SKIP: int

class StampDecoder:
    rows: int
    row: int
    need: int
    def __init__(self, out: npt.NDArray[np.int64]) -> None: ...
    @property
    def done(self) -> bool: ...
    def feed(self, buf: bytearray, start: int, end: int) -> int: ...

class PackedDecoder:
    rows: int
    row: int
    need: int
    def __init__(
        self,
        schemas: npt.NDArray[np.uint32],
        first: npt.NDArray[np.int32],
        counts: npt.NDArray[np.int32],
        kinds: npt.NDArray[np.int32],
        cols: npt.NDArray[np.int32],
        matrix: npt.NDArray[np.float32],
        tags: npt.NDArray[np.uint8],
        ts: npt.NDArray[np.int64],
    ) -> None: ...
    @property
    def done(self) -> bool: ...
    def feed(self, buf: bytearray, start: int, end: int) -> int: ...
