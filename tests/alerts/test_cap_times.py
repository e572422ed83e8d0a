"""A CAP warning's times are honoured and a playing warning can be stopped (issue 16,
defects 2 and 3), against the real speaker simulators over the session's Mosquitto and
the devices worker that sends broadcasts and follows their receipts.

The warnings are written the way China's national early-warning system (国家预警信息发布)
publishes them in CAP 1.2: zh-CN, a GB/T 2260 division code as the area, ``<effective>``
and ``<expires>`` with the +08:00 offset.

- an expired warning is refused with its time, and nothing sounds (it used to play);
- one not yet effective is a scheduled broadcast, played at ``<effective>``;
- a playing warning stops on every speaker at ``<expires>``;
- a Cancel, and an Update that supersedes it, stop it on every speaker at once (a
  cancelled warning played on for about a minute); the speakers' receipts show the stop."""
from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from alerts.actor import Actor
from alerts.cap.parse import CapError
from alerts.cap.service import import_cap
from alerts.config import load_config
from alerts.registry import RegistryView
from config.settings import DEMO_SITE_FILE
from store.db import connect
from tests.devices.conftest import provision, query, start_fleet, start_service, wait_for

SPEAKERS = ("speaker-dsc", "speaker-tyc")        # 东山镇's two villages
CST = timezone(timedelta(hours=8))
SENDER = "51019941600000@12379.cn"

WARNING = """<?xml version="1.0" encoding="UTF-8"?>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
  <identifier>{ident}</identifier>
  <sender>{sender}</sender>
  <sent>{sent}</sent>
  <status>Actual</status>
  <msgType>{msg_type}</msgType>
  <scope>Public</scope>
  {references}
  <info>
    <language>zh-CN</language>
    <category>Met</category>
    <event>暴雨</event>
    <responseType>Prepare</responseType>
    <urgency>Immediate</urgency>
    <severity>Severe</severity>
    <certainty>Likely</certainty>
    <effective>{effective}</effective>
    <expires>{expires}</expires>
    <senderName>示范县气象台</senderName>
    <headline>示范县气象台发布暴雨橙色预警[Ⅱ级/严重]</headline>
    <description>预计未来6小时东山镇降雨量将达80毫米以上，并伴有雷电、短时大风。</description>
    <instruction>请危险地带人员立即转移，注意防范山洪地质灾害。</instruction>
    <area><areaDesc>东山镇</areaDesc><geocode><valueName>GB/T 2260</valueName><value>510199101</value></geocode></area>
  </info>
</alert>"""


def cst(t: datetime) -> str:
    return t.astimezone(CST).isoformat(timespec="seconds")


def warning(ident: str, *, msg_type: str = "Alert", effective: datetime | None = None,
            expires: datetime | None = None, references: list[str] = ()) -> str:
    now = datetime.now(UTC)
    refs = " ".join(f"{SENDER},{r},{cst(now - timedelta(minutes=1))}" for r in references)
    return WARNING.format(ident=ident, sender=SENDER, sent=cst(now - timedelta(seconds=5)), msg_type=msg_type,
                          references=f"<references>{refs}</references>" if refs else "",
                          effective=cst(effective or now - timedelta(seconds=5)),
                          expires=cst(expires or now + timedelta(hours=6)))


@pytest.fixture(scope="module")
def speakers(site_db, mqtt, tmp_path_factory, demo_site):
    var = tmp_path_factory.mktemp("cap-times-var")
    provision(mqtt, var, dict.fromkeys(SPEAKERS, "speaker"))
    svc = start_service(site_db, mqtt, var)
    fleet = start_fleet(demo_site, mqtt, var, set(SPEAKERS))     # speed 1: a warning plays 30 s × 2
    wait_for(site_db, "SELECT count(*) FROM device_availability WHERE device_id = ANY(%s) AND status = 'online'",
             (list(SPEAKERS),), lambda n: n == len(SPEAKERS))
    yield fleet
    fleet.stop()
    svc.stop()


def cap(db: str, xml: str):
    registry = RegistryView()
    with connect(db) as conn:
        registry.refresh(conn)
        return import_cap(conn, load_config(DEMO_SITE_FILE), registry, xml, Actor.system("test"))


def new_ident() -> str:
    return f"51019941600000_{uuid.uuid4().hex[:10]}"


def playing_on_every_speaker(db: str, broadcast_id: str, timeout: float = 20.0) -> None:
    wait_for(db, "SELECT count(*) FROM device_broadcast_receipts WHERE broadcast_id = %s AND status = 'started'",
             (broadcast_id,), lambda n: n == len(SPEAKERS), timeout=timeout)


def receipts(db: str, broadcast_id: str) -> dict[str, tuple]:
    return {r[0]: r[1:] for r in query(db, "SELECT speaker_id, status, detail, finished_at "
                                           "FROM device_broadcast_receipts WHERE broadcast_id = %s", (broadcast_id,))}


def silence(db: str, broadcast_id: str) -> None:
    """Stop what a test left playing, so the next test's warning is not queued behind it."""
    from devices.broadcast.service import stop_broadcast

    with connect(db) as conn:
        if conn.execute("SELECT 1 FROM device_broadcasts WHERE id = %s AND state IN ('scheduled','playing') "
                        "AND stop_requested_at IS NULL", (broadcast_id,)).fetchone():
            stop_broadcast(conn, broadcast_id, by="test", reason="test over", now=datetime.now(UTC))
    wait_for(db, "SELECT state FROM device_broadcasts WHERE id = %s", (broadcast_id,),
             lambda s: s in ("stopped", "cancelled", "done", "partial", "failed"), timeout=15)


def test_an_expired_warning_is_refused_with_its_time(speakers, site_db):
    ident = new_ident()
    expired = datetime.now(UTC) - timedelta(days=1)
    with pytest.raises(CapError) as err:
        cap(site_db, warning(ident, effective=expired - timedelta(hours=6), expires=expired))
    local = expired.astimezone(CST)
    assert str(err.value).startswith("预警已过期")
    assert f"{local:%Y-%m-%d %H:%M} +08:00" in str(err.value) and "expired at" in str(err.value)
    assert query(site_db, "SELECT count(*) FROM cases WHERE source_ref = %s", (f"{SENDER}|{ident}",)) == [(0,)]
    assert query(site_db, "SELECT count(*) FROM device_broadcasts WHERE requested_by = %s", (f"cap:{ident}",)) == [(0,)]


def test_a_warning_not_yet_effective_is_played_then(speakers, site_db):
    effective = (datetime.now(UTC) + timedelta(seconds=3)).replace(microsecond=0)
    result = cap(site_db, warning(new_ident(), effective=effective))
    assert query(site_db, "SELECT state, scheduled_at FROM device_broadcasts WHERE id = %s",
                 (result.broadcast_id,)) == [("scheduled", effective)]
    assert result.action == "created" and result.scheduled_at == effective
    assert query(site_db, "SELECT count(*) FROM device_broadcast_receipts WHERE broadcast_id = %s",
                 (result.broadcast_id,)) == [(0,)]
    playing_on_every_speaker(site_db, result.broadcast_id)
    (dispatched,) = query(site_db, "SELECT dispatched_at FROM device_broadcasts WHERE id = %s",
                          (result.broadcast_id,))[0]
    assert effective <= dispatched < effective + timedelta(seconds=3)
    case = query(site_db, "SELECT description FROM cases WHERE id = %s", (result.case_id,))[0][0]
    assert f"生效时间：{effective.astimezone(CST):%Y-%m-%d %H:%M} +08:00" in case
    silence(site_db, result.broadcast_id)


def test_a_playing_warning_stops_at_its_expiry(speakers, site_db):
    expires = (datetime.now(UTC) + timedelta(seconds=5)).replace(microsecond=0)
    result = cap(site_db, warning(new_ident(), expires=expires))
    playing_on_every_speaker(site_db, result.broadcast_id)
    wait_for(site_db, "SELECT state FROM device_broadcasts WHERE id = %s", (result.broadcast_id,),
             lambda s: s == "stopped", timeout=15)
    assert result.ends_at == expires
    got = receipts(site_db, result.broadcast_id)
    assert {k: v[0] for k, v in got.items()} == dict.fromkeys(SPEAKERS, "stopped")
    local = f"{expires.astimezone(CST):%Y-%m-%d %H:%M} +08:00"
    assert all(f"预警已过期 (the warning expired at {local})" in v[1] for v in got.values())
    assert all(expires <= v[2] < expires + timedelta(seconds=5) for v in got.values())
    assert not any(speakers.devices[s].state["playing"] for s in SPEAKERS)


def test_a_cancel_stops_the_warning_on_every_speaker_at_once(speakers, site_db):
    ident = new_ident()
    alert = cap(site_db, warning(ident))
    playing_on_every_speaker(site_db, alert.broadcast_id)
    cancel_ident = new_ident()
    told = time.monotonic()
    result = cap(site_db, warning(cancel_ident, msg_type="Cancel", references=[ident]))
    wait_for(site_db, "SELECT state FROM device_broadcasts WHERE id = %s", (alert.broadcast_id,),
             lambda s: s == "stopped", timeout=10)
    assert time.monotonic() - told < 5          # at once: it played on for about a minute
    assert (result.action, result.case_id, result.stopped) == ("cancelled", alert.case_id, [alert.broadcast_id])
    got = receipts(site_db, alert.broadcast_id)
    assert {k: v[0] for k, v in got.items()} == dict.fromkeys(SPEAKERS, "stopped")
    assert all("预警已解除" in v[1] for v in got.values())
    assert not any(speakers.devices[s].state["playing"] for s in SPEAKERS)
    assert query(site_db, "SELECT state FROM cases WHERE id = %s", (alert.case_id,)) == [("cancelled",)]
    assert query(site_db, "SELECT actor, detail->>'speakers_told' FROM audit_log WHERE action = 'broadcast.stop' "
                          "AND target = %s", (alert.broadcast_id,)) == [(f"cap:{cancel_ident}", "2")]
    # The same Cancel again changes nothing.
    assert cap(site_db, warning(cancel_ident, msg_type="Cancel", references=[ident])).action == "duplicate"


def test_an_update_supersedes_the_playing_warning(speakers, site_db):
    ident = new_ident()
    alert = cap(site_db, warning(ident))
    playing_on_every_speaker(site_db, alert.broadcast_id)
    update = cap(site_db, warning(new_ident(), msg_type="Update", references=[ident]))
    wait_for(site_db, "SELECT state FROM device_broadcasts WHERE id = %s", (alert.broadcast_id,),
             lambda s: s == "stopped", timeout=10)
    assert (update.action, update.case_id, update.stopped) == ("updated", alert.case_id, [alert.broadcast_id])
    assert update.broadcast_id not in (None, alert.broadcast_id) and update.speakers == len(SPEAKERS)
    assert {v[0] for v in receipts(site_db, alert.broadcast_id).values()} == {"stopped"}
    # the updated warning plays in its place, on the same case
    playing_on_every_speaker(site_db, update.broadcast_id)
    assert query(site_db, "SELECT case_id FROM case_broadcasts WHERE broadcast_id = %s",
                 (update.broadcast_id,)) == [(alert.case_id,)]
    silence(site_db, update.broadcast_id)
