from typing import Any

import numpy as np
import numpy.typing as npt

from services.scoring import ResponseBatch

class WireError(ValueError): ...

class Decoded:
    total: int
    index: npt.NDArray[np.int32]
    amount: npt.NDArray[np.int64]
    currency: npt.NDArray[np.int8]
    term: npt.NDArray[np.int16]
    product: npt.NDArray[np.int8]
    channel: npt.NDArray[np.int8]
    declared: npt.NDArray[np.float64]
    application_ids: bytes
    merchant_ids: bytes
    errors: list[tuple[int, str, str, str]]
    app_list: list[bytes]

class Encoder:
    def __init__(self, resp: ResponseBatch, currency_codes: list[bytes]) -> None: ...

def decode(data: bytes, batch: bool, currency_table: bytes, products: int, channels: int) -> Decoded: ...
def decode_one(data: bytes, currency_table: bytes, products: int, channels: int) -> tuple[Any, ...]: ...
def encode_one(enc: Encoder, i: int, app: bytes, currency: int) -> bytes: ...
def encode_batch(
    total: int,
    enc: Encoder | None,
    index: npt.NDArray[np.int32],
    apps: list[bytes],
    currency: npt.NDArray[np.int8],
    errors: list[tuple[int, str, int, str, str]],
    offset: int = 0,
) -> bytes: ...
def encode_error(app: bytes, code: int, field: str, message: str) -> bytes: ...
