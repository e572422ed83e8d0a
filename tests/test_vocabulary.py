"""One vocabulary: every event type a source of the hub can emit has its label and default
severity in config/vocabulary.py, the bus contract and the alerts take theirs from there,
and the web UI keeps no copy of its own."""
from __future__ import annotations

import re
from pathlib import Path

from config import vocabulary
from config.vocabulary import EVENT_SEVERITIES, EVENT_TYPES, SOURCE_KINDS, event_label

ROOT = Path(__file__).resolve().parent.parent


def emitted_event_types() -> dict[str, str]:
    """Every event type each source declares it raises → who declares it."""
    from bus.events import EVENTS
    from cameras import health, pipeline
    from cameras.onvif import parsers
    from cameras.recording import quota
    from devices import media, worker as devices_worker
    from store import security

    found: dict[str, str] = {}
    for t in EVENTS:
        found[t] = "bus.events.EVENTS (devices)"
    for kind in SOURCE_KINDS:                   # avail (last will) and res, of every kind
        for t in (f"{kind}.online", f"{kind}.offline", f"{kind}.command_result"):
            found[t] = "bus.normalise (avail, res)"
    for module in (health, pipeline, media, devices_worker, security, quota):
        for t in module.EMITS:
            found[t] = f"{module.__name__}.EMITS"
    for topic, t in parsers.EMITS.items():
        found[t] = f"ONVIF parser of {topic}"
    return found


def test_every_event_type_any_source_can_emit_has_a_label_and_severity():
    missing = {t: who for t, who in emitted_event_types().items() if t not in EVENT_TYPES}
    assert not missing, f"event types without a label in config/vocabulary.py: {missing}"
    for t, entry in EVENT_TYPES.items():
        assert entry.label and entry.label != t, t
        assert entry.severity in EVENT_SEVERITIES, t


def test_the_cameras_tamper_types_are_the_ones_the_analytics_raise():
    # The defect this vocabulary ended: alerts said camera.tamper.defocus, the worker sends
    # camera.tamper.defocused, so a defocus case got a generic description; dark, bright
    # and frozen had no label at all.
    from config.camera_analytics import TAMPER_CHECKS
    for check in TAMPER_CHECKS:
        assert f"camera.tamper.{check}" in EVENT_TYPES
    assert event_label("camera.tamper.defocused") == "摄像机失焦"
    assert event_label("camera.tamper.dark") == "画面过暗"
    assert event_label("camera.tamper.bright") == "画面过亮"
    assert event_label("camera.frozen") == "画面冻结"
    assert "camera.tamper.defocus" not in EVENT_TYPES
    # a camera type nobody names falls back to its family, an unknown one to its code
    assert event_label("camera.tamper.sprayed") == "摄像机遭破坏"
    assert event_label("camera.brand_new") == "camera.brand_new"


def test_alerts_describe_a_defocus_case_by_its_own_label():
    from alerts import labels
    assert labels.event_label("camera.tamper.defocused") == "摄像机失焦"
    assert labels.severity_label("critical") == "紧急" and labels.urgency_colour("high") == "red"


def test_the_bus_takes_its_severities_from_the_vocabulary():
    from bus.events import EVENTS, default_severity
    for t in EVENTS:
        assert default_severity(t) == EVENT_TYPES[t].severity
    assert default_severity("camera.fire.kitchen") == "critical"     # by family
    assert default_severity("camera.anything") == "minor"            # any other camera event


def test_the_web_ui_keeps_no_copy_of_the_labels():
    """Labels reach the UI from GET /api/vocabulary; a page that spells one out itself has
    a second vocabulary that will drift."""
    copies = []
    labels = {e.label for e in EVENT_TYPES.values()} | set(vocabulary.CATEGORY_LABELS.values()) \
        | set(vocabulary.ROLE_LABELS.values())
    for path in sorted((ROOT / "web").rglob("*.js")):
        text = path.read_text()
        for label in labels:
            for m in re.finditer(re.escape(f"'{label}'"), text):
                copies.append(f"{path.relative_to(ROOT)}: {label}")
    assert not copies, "\n".join(copies)


def test_the_api_serves_the_vocabulary():
    body = vocabulary.as_json()
    assert body["event_types"]["camera.tamper.defocused"] == {"label": "摄像机失焦", "severity": "major"}
    assert body["roles"]["video_supervisor"] == "视频监督员"
    assert body["urgencies"]["high"] == {"label": "严重", "colour": "red", "event_severity": "critical"}
    assert set(body["source_kinds"]) == set(SOURCE_KINDS)
    # every event family has a name (the rule editor groups event types by it)
    assert set(body["event_kinds"]) == set(vocabulary.EVENT_FAMILIES) and body["event_kinds"]["recording"] == "录像"
