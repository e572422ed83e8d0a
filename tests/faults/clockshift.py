"""Run the ingest worker (``python -m ingest.worker``) with a wall clock that can jump:
``time.time()`` returns the real time plus the offset (seconds) written in the file named
by XLHUB_TEST_CLOCK_FILE, so a test can step the hub's clock back or forward as NTP or an
operator would. The monotonic clock is left alone, as the kernel does."""
from __future__ import annotations

import os
import time

_real_time = time.time
_path = os.environ["XLHUB_TEST_CLOCK_FILE"]
_cache = [0.0, -1.0]          # offset, monotonic time it was read


def _shifted() -> float:
    now = time.monotonic()
    if now - _cache[1] > 0.1:
        try:
            with open(_path) as f:
                _cache[0] = float(f.read().strip() or 0)
        except (OSError, ValueError):
            pass
        _cache[1] = now
    return _real_time() + _cache[0]


time.time = _shifted

if __name__ == "__main__":
    from ingest.worker import main

    main()
