from typing import Any

import numpy as np
import numpy.typing as npt

from services.errors import InternalError

MAX_ID: int
MAX_TEXT: int

class WireError(ValueError): ...
class EncodeError(InternalError, ValueError): ...

class Violation(ValueError):
    column: int
    verdict: int
    number: int
    text: bytes
    app: bytes

class RequestCodec:
    def __init__(
        self,
        routes: npt.NDArray[np.int64],
        cols: npt.NDArray[np.int64],
        n_slots: int,
        currencies: bytes,
        dtype: np.dtype[Any],
        deadline_offset: int,
        caller_offset: int,
        max_id: int,
    ) -> None: ...
    def decode_one(self, data: bytes, deadline: float, caller: bytes = b"") -> bytes: ...
    def decode_batch(
        self, data: bytes, deadline: float, max_items: int, caller: bytes = b""
    ) -> tuple[int, npt.NDArray[np.int32], npt.NDArray[np.void], list[tuple[int, Violation]]]: ...

class Program:
    def __init__(
        self, ops: npt.NDArray[np.int64], itemsize: int, status_offset: int, app_offset: int, app_width: int,
        n_tables: int, decision_offset: int,
    ) -> None: ...

class Encoder:
    def __init__(
        self, prog: Program, rows: npt.NDArray[np.void], tables: list[list[bytes]], message: bytes
    ) -> None: ...
    def status(self, i: int) -> int: ...
    def decision(self, i: int) -> int: ...

def encode_one(enc: Encoder, i: int) -> bytes: ...
def encode_batch(
    total: int,
    enc: Encoder | None,
    index: npt.NDArray[np.int32],
    errors: list[tuple[int, bytes, int, str, str, bytes]],
    offset: int = 0,
) -> bytes: ...
def encode_error(app: bytes, code: int, field: str, message: str, extra: bytes = ...) -> bytes: ...
def set_code_details(table: tuple[bytes, ...]) -> None: ...
