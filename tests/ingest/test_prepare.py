"""ingest.writer.prepare takes a short path for device telemetry; whatever it is given, the
rows, dead letters and counts must be exactly those of the general path through
bus.normalise.normalise."""
from __future__ import annotations

import json
import random
import time

import pytest

from ingest import writer
from ingest.writer import prepare
from store.sources import Source, SourceCache

NOW_MS = int(time.time() * 1000)
SOURCES = {
    "door-1": Source("door", "G1", ["C", "G1"], True),
    "speaker-1": Source("speaker", "G1", ["C", "G1"], True),
    "drone-1": Source("drone", "G2", ["C", "G2"], True),
    "radio-1": Source("radio", None, None, True),
    "door-off": Source("door", "G1", ["C", "G1"], False),
    "cam-1": Source("camera", "G2", ["C", "G2"], True),
}
BODIES = {
    "door": {"door_open": False, "locked": True, "battery_pct": 64.8, "fw": "3.2", "rssi_dbm": -70},
    "speaker": {"volume": 55, "playing": False, "amp_temp_c": 41.5},
    "drone": {"lat": 30.52, "lon": 104.4, "alt_m": 80.0, "heading_deg": 90.0, "speed_mps": 5.0, "battery_pct": 70.0,
              "mode": "mission", "uptime_s": 86400},
    "radio": {"lat": 30.6, "lon": 104.5, "battery_pct": 80.0, "signal_dbm": -75.0},
    "camera": {"state": "online", "fps": 25.0},
}
LEAVES = [None, True, 0, -1, 1.5, 1e308, "", "x", "2026-05-01T08:00:00+08:00", "2026-05-01T08:00:00", [], {},
          NOW_MS, 7_258_118_400_001, "\u0000", "门禁"]


def _messages(n: int, seed: int) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    ids = list(SOURCES) + ["nobody"]
    out = []
    for i in range(n):
        sid = rng.choice(ids)
        kind = SOURCES[sid].kind if sid in SOURCES and rng.random() < 0.8 else rng.choice(list(BODIES))
        channel = rng.choice(["tele"] * 8 + ["state"])
        # device clocks up to 15 min either side of ours (the skew count)
        body = {"v": 1, "id": f"m-{i}", "ts": NOW_MS + rng.randrange(-900_000, 900_000), "seq": i, **BODIES[kind]}
        what = rng.randrange(8)
        if what == 0:
            body.pop(rng.choice(sorted(body)))
        elif what == 1:
            body[rng.choice(sorted(body))] = rng.choice(LEAVES)
        elif what == 2:
            body[f"extra_{i % 3}"] = rng.choice(LEAVES)
        payload = json.dumps(body, ensure_ascii=rng.random() < 0.5).encode()
        if what == 3:
            payload = payload[: rng.randrange(0, len(payload))]
        elif what == 4:
            payload = payload.replace(b"}", b',"pad":"' + b"x" * 70_000 + b'"}')
        out.append((f"xlhub/v1/{kind}/{sid}/{channel}", payload))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_short_path_gives_the_same_rows_as_normalise(seed, monkeypatch):
    received = time.time()
    items = [(t.encode(), p, 1, i + 1, 0, received, 1) for i, (t, p) in enumerate(_messages(400, seed))]
    registry = SourceCache()
    registry.sources = dict(SOURCES)
    registry.loaded_at = time.monotonic()
    short = prepare(items, registry, probe_times=True)
    monkeypatch.setattr(writer, "_SHORT_PATH_ON", False)
    general = prepare(items, registry, probe_times=True)
    assert short.telemetry == general.telemetry
    assert short.positions == general.positions
    assert short.camera_health == general.camera_health
    assert short.dead == general.dead
    assert (short.skewed, short.source_times, short.retry_unknown, short.ignored) == \
           (general.skewed, general.source_times, general.retry_unknown, general.ignored)
    # the sample exercises both outcomes of the short path
    assert len(short.telemetry) > 50 and len(short.dead) > 50 and short.positions and short.skewed
