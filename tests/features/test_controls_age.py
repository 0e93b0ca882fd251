"""How current the operator controls in force are known to be: the age a replica's degraded
mode for "controls" is judged by."""

from __future__ import annotations

import math
import time
from pathlib import Path

from features.controls import ControlCache
from features.settings import FeatureSettings
from features.stores import open_backend
from features.stores.sqlite.controls import SqliteControls
from tests.support import free_port


def test_a_store_that_answers_keeps_the_set_current(tmp_path: Path) -> None:
    cache = ControlCache(SqliteControls(tmp_path / "controls.db"), poll_s=0.05).start()
    try:
        first = cache.age_s()
        assert 0 <= first < 5
        checked = cache.checked_at
        deadline = time.monotonic() + 10
        while cache.checked_at == checked:  # the poller confirms the version again (observed)
            assert time.monotonic() < deadline, "no version check within 10 s"
            time.sleep(0.01)
        assert cache.age_s() < 5
    finally:
        cache.close()


def test_a_store_never_reached_has_no_known_age(tmp_path: Path) -> None:
    settings = FeatureSettings(data_dir=tmp_path, online_store="redis", redis_url=f"redis://127.0.0.1:{free_port()}/0",
                               timeout_s=0.2, breaker_failures=1)
    cache = ControlCache(open_backend(settings).controls(), poll_s=3600).start()
    try:
        assert cache.failures >= 1 and cache.checked_at is None
        assert math.isinf(cache.age_s()), "a replica started while the store was down knows no set"
        assert cache.snapshot.version == 0 and not cache.snapshot.controls
    finally:
        cache.close()
