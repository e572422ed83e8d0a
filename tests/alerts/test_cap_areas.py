"""Emergency warnings reach exactly the villages they are for (issue 16, defects 1 and 6).

CAP 1.2 documents written as the OASIS specification's examples write them (en-US,
``<polygon>``, ``<circle>``) and as China's national early-warning system
(国家突发事件预警信息发布系统, GB/T 35965.1) writes them (zh-CN, 31-character identifiers,
``<geocode><valueName>行政区划代码</valueName>``) are posted to the real API over a real
database; the nodes a warning names, the case's place and the speakers of its broadcast
are checked. The demo county is 0.30° × 0.20° (about 29 × 22 km); its centre, the county
seat, is the corner where four villages meet.

The site adds 河湾村, a village with a centre and a speaker but no boundary (a site file
may leave boundaries out): it is matched by its centre.
"""
from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from store import identity
from store.db import connect
from store.registry import sync_site
from config.site import load_site
from tests.alerts.conftest import one, query, write_site
from tests.api.conftest import PASSWORD, ApiServer

COUNTY, DS_TOWN, XH_TOWN = "510199000000", "510199101000", "510199201000"
DSC, TYC, XHC, LLS = "510199101201", "510199101202", "510199201201", "510199201001"
DSC1, TYC1, XHC2, LLS2 = "510199101201001", "510199101202001", "510199201201002", "510199201001002"
HWC = "510199201202"                                 # 河湾村: no boundary, a centre only
HWC_CENTER = (30.66, 104.40)
USERS = ("lead", "ds-dispatcher")


def _add_boundaryless_village(data: dict) -> None:
    xihe = next(n for n in data["grid"]["children"] if n["code"] == XH_TOWN)
    xihe["children"].append({"code": HWC, "name": "河湾村", "level": "village",
                             "center": {"lat": HWC_CENTER[0], "lon": HWC_CENTER[1]}})
    data["devices"].append({"id": "speaker-hwc", "kind": "speaker", "name": "河湾村广播", "grid": HWC,
                            "position": {"lat": HWC_CENTER[0], "lon": HWC_CENTER[1]}})


@pytest.fixture(scope="module")
def api(db_url, mqtt, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cap-areas")
    site_file = write_site(tmp / "site.yaml", mutate=_add_boundaryless_village)
    site = load_site(site_file)
    with connect(db_url) as conn:
        sync_site(conn, site)
        for user in site.users:
            identity.set_password(conn, user.username, PASSWORD)
    with ApiServer(db_url, mqtt.url, site_file=site_file, var_dir=tmp / "var") as server:
        server.db = db_url
        server.users = {u: server.client(u) for u in USERS}
        yield server
        for c in server.users.values():
            c.close()


# ---------------------------------------------------------------------------- documents

def _times() -> dict:
    now = datetime.now(UTC).astimezone().replace(microsecond=0)
    return {"sent": now.isoformat(), "expires": (now + timedelta(hours=6)).isoformat()}


def oasis_alert(area: str) -> tuple[str, str]:
    """After the OASIS CAP 1.2 specification's thunderstorm example (Appendix A.2)."""
    ident = f"KSTO{uuid.uuid4().hex[:10]}"
    t = _times()
    return ident, f"""<?xml version="1.0" encoding="UTF-8"?>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
  <identifier>{ident}</identifier>
  <sender>KSTO@NWS.NOAA.GOV</sender>
  <sent>{t['sent']}</sent>
  <status>Actual</status>
  <msgType>Alert</msgType>
  <scope>Public</scope>
  <info>
    <category>Met</category>
    <event>SEVERE THUNDERSTORM</event>
    <responseType>Shelter</responseType>
    <urgency>Immediate</urgency>
    <severity>Severe</severity>
    <certainty>Observed</certainty>
    <eventCode><valueName>SAME</valueName><value>SVR</value></eventCode>
    <expires>{t['expires']}</expires>
    <senderName>NATIONAL WEATHER SERVICE SACRAMENTO CA</senderName>
    <headline>SEVERE THUNDERSTORM WARNING</headline>
    <description>AT 254 PM PDT, NATIONAL WEATHER SERVICE DOPPLER RADAR INDICATED A SEVERE THUNDERSTORM.</description>
    <instruction>TAKE COVER IN A SUBSTANTIAL SHELTER UNTIL THE STORM PASSES.</instruction>
    <contact>BARUFFALDI/JUSKIE</contact>
    {area}
  </info>
</alert>"""


def national_alert(area: str) -> tuple[str, str]:
    """As the national early-warning system writes a warning (GB/T 35965.1): the identifier
    is the issuing unit's code (6-digit division + 3 + 3 + 2), the time and a sequence."""
    now = datetime.now(UTC).astimezone()
    unit = uuid.uuid4().int % 1000
    ident = f"510199416{unit:03d}00_{now:%Y%m%d%H%M%S}_{uuid.uuid4().int % 10}"
    t = _times()
    return ident, f"""<?xml version="1.0" encoding="UTF-8"?>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
  <identifier>{ident}</identifier>
  <sender>51019941600000</sender>
  <sent>{t['sent']}</sent>
  <status>Actual</status>
  <msgType>Alert</msgType>
  <scope>Public</scope>
  <code>预警信息</code>
  <info>
    <language>zh-CN</language>
    <category>Met</category>
    <event>暴雨</event>
    <urgency>Immediate</urgency>
    <severity>Severe</severity>
    <certainty>Likely</certainty>
    <eventCode><valueName>GB/T 35561</valueName><value>11B03</value></eventCode>
    <expires>{t['expires']}</expires>
    <senderName>示范县气象台</senderName>
    <headline>示范县气象台发布暴雨橙色预警信号</headline>
    <description>预计未来6小时内示范县将出现50毫米以上降雨，局地伴有雷电和短时大风。</description>
    <instruction>请做好防暴雨准备，危险地带人员立即转移。</instruction>
    {area}
  </info>
</alert>"""


def polygon(desc: str, *lon_lat: tuple[float, float]) -> str:
    """A CAP ``<area>`` with a closed polygon; points given as [lon, lat] like the site file,
    written the CAP way (lat,lon)."""
    points = list(lon_lat) + [lon_lat[0]]
    text = " ".join(f"{lat:.6f},{lon:.6f}" for lon, lat in points)
    return f"<area><areaDesc>{desc}</areaDesc><polygon>{text}</polygon></area>"


def circle(desc: str, lat: float, lon: float, radius_km: float) -> str:
    return f"<area><areaDesc>{desc}</areaDesc><circle>{lat},{lon} {radius_km}</circle></area>"


def geocode(desc: str, value: str, name: str = "行政区划代码") -> str:
    return (f"<area><areaDesc>{desc}</areaDesc><geocode><valueName>{name}</valueName>"
            f"<value>{value}</value></geocode></area>")


def post(api, user: str, xml: str):
    return api.users[user].post("/api/alerts/cap", content=xml.encode("utf-8"),
                                headers={"Content-Type": "application/xml"})


def imported(api, xml: str, user: str = "lead") -> dict:
    r = post(api, user, xml)
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["action"] == "created", out
    return out


def broadcast_targets(api, out: dict) -> list[str]:
    """The nodes the import's broadcast is addressed to (the devices worker sends it to the
    speakers under them)."""
    return one(api.db, "SELECT targets FROM device_broadcasts WHERE id = %s", (out["broadcast_id"],))["targets"]


# ---------------------------------------------------------------------------- defect 1: boundaries, not centres

def test_a_polygon_drawn_around_one_village_selects_only_that_village(api):
    # 东山村 exactly as the site file draws it; the county's centre is on its corner.
    _, xml = national_alert(polygon("东山村", (104.450, 30.600), (104.600, 30.600), (104.600, 30.700),
                                    (104.450, 30.700)))
    out = imported(api, xml)
    assert out["areas"] == [DSC]
    assert out["speakers"] == 1                                      # 东山村广播, nobody else
    assert broadcast_targets(api, out) == [DSC]
    case = one(api.db, "SELECT grid_code FROM cases WHERE id = %s", (out["case_id"],))
    assert case["grid_code"] == DSC


def test_a_polygon_traced_a_few_metres_wide_of_a_village_still_selects_only_it(api):
    # Hand-drawn: ~10 m outside the border all round (0.0001° ≈ 11 m north-south, 9.6 m east-west).
    e = 0.0001
    _, xml = oasis_alert(polygon("DONGSHAN VILLAGE", (104.450 - e, 30.600 - e), (104.600 + e, 30.600 - e),
                                 (104.600 + e, 30.700 + e), (104.450 - e, 30.700 + e)))
    assert imported(api, xml)["areas"] == [DSC]


def test_a_1_km_square_around_the_county_seat_selects_the_grids_it_overlaps(api):
    half_lat = 0.5 / 111.195
    half_lon = 0.5 / (111.195 * math.cos(math.radians(30.6)))
    lon0, lat0 = 104.45, 30.6
    _, xml = oasis_alert(polygon("COUNTY SEAT", (lon0 - half_lon, lat0 - half_lat), (lon0 + half_lon, lat0 - half_lat),
                                 (lon0 + half_lon, lat0 + half_lat), (lon0 - half_lon, lat0 + half_lat)))
    out = imported(api, xml)
    # The four grids that meet at the seat, not the county (old: the whole county).
    assert out["areas"] == [DSC1, TYC1, LLS2, XHC2]
    assert out["speakers"] == 2                           # only two of those grids have a speaker
    case = one(api.db, "SELECT grid_code FROM cases WHERE id = %s", (out["case_id"],))
    assert case["grid_code"] == COUNTY                    # the case sits where the four meet


def test_the_southern_half_of_a_village_selects_that_village(api):
    # 桃园村 spans 30.50–30.60; the warning covers 30.50–30.55 (old: nothing, refused).
    _, xml = national_alert(polygon("桃园村南部", (104.450, 30.500), (104.600, 30.500), (104.600, 30.550),
                                    (104.450, 30.550)))
    out = imported(api, xml)
    assert out["areas"] == [TYC]
    assert out["speakers"] == 1


def test_a_circle_is_measured_in_metres(api):
    # From (30.55, 104.41) the edge of 桃园村 (lon 104.45) is 0.04° of longitude: 3.83 km at
    # this latitude (4.45 km if degrees of longitude were taken as degrees of latitude).
    # 4.0 km reaches it; 3.6 km does not. Both reach the two grids of 柳林社区: the community.
    _, xml = oasis_alert(circle("LIULIN", 30.55, 104.41, 4.0))
    assert imported(api, xml)["areas"] == [TYC1, LLS]
    _, xml = oasis_alert(circle("LIULIN", 30.55, 104.41, 3.6))
    assert imported(api, xml)["areas"] == [LLS]


def test_a_node_without_a_boundary_falls_back_to_its_centre(api):
    _, xml = national_alert(circle("河湾村", HWC_CENTER[0], HWC_CENTER[1], 1.0))
    out = imported(api, xml)
    # 河湾村 by its centre; the grid it sits in (西河村第二网格) by its boundary.
    assert out["areas"] == [XHC2, HWC]
    assert out["speakers"] == 1 and broadcast_targets(api, out) == [XHC2, HWC]   # 河湾村广播
    # An area elsewhere does not reach it.
    _, xml = national_alert(polygon("西河村西部", (104.300, 30.600), (104.375, 30.600), (104.375, 30.700),
                                    (104.300, 30.700)))
    assert imported(api, xml)["areas"] == ["510199201201001"]


def test_geocodes_name_nodes_by_division_code_prefix(api):
    # A city's code (510100: its county 510199 lies in it) names the whole county.
    _, xml = national_alert(geocode("成都市全市", "510100"))
    out = imported(api, xml)
    assert out["areas"] == [COUNTY]
    assert out["speakers"] == 5
    # A township's 9 digits and a village's 12 (GB/T 10114) name that township and village.
    _, xml = national_alert(geocode("西河乡", "510199201") + geocode("东山村", "510199101201", "GB/T 10114"))
    assert imported(api, xml)["areas"] == [DSC, XH_TOWN]
    # Another county's code names nothing here: refused with the reason.
    _, xml = national_alert(geocode("邻县", "510198"))
    r = post(api, "lead", xml)
    assert r.status_code == 400 and "预警区域不在本辖区网格内" in r.json()["detail"]


# ---------------------------------------------------------------------------- defect 6: out of scope

def test_a_township_dispatcher_importing_a_warning_beyond_their_township_is_told_why(api):
    before = one(api.db, "SELECT count(*) AS n FROM cases WHERE channel = 'cap'")["n"]
    # The whole county, by its division code.
    ident, xml = national_alert(geocode("示范县全县", "510199"))
    r = post(api, "ds-dispatcher", xml)
    assert r.status_code == 403, r.text
    detail = r.json()["detail"]
    assert detail.startswith("预警区域超出您的管辖范围")
    assert "示范县（510199000000）" in detail and "东山镇（510199101000）" in detail
    # Partly outside: the northern villages of both townships; 西河乡's two (西河村, and
    # 河湾村 by its centre) are named outside, 东山村 is not.
    _, xml2 = oasis_alert(polygon("NORTH", (104.300, 30.600), (104.600, 30.600), (104.600, 30.700),
                                  (104.300, 30.700)))
    r = post(api, "ds-dispatcher", xml2)
    assert r.status_code == 403, r.text
    assert "西河村（510199201201）、河湾村（510199201202）" in r.json()["detail"]
    assert "东山村" not in r.json()["detail"]
    # Nothing was created, and both refusals are on record with the part outside.
    assert one(api.db, "SELECT count(*) AS n FROM cases WHERE channel = 'cap'")["n"] == before
    assert one(api.db, "SELECT count(*) AS n FROM cap_alerts WHERE identifier = %s", (ident,))["n"] == 0
    rows = query(api.db, "SELECT outcome, detail FROM audit_log WHERE actor = 'ds-dispatcher' "
                         "AND action = 'POST /api/alerts/cap' ORDER BY id")
    assert [(r["outcome"], r["detail"]["status"], r["detail"]["outside"]) for r in rows[-2:]] == [
        ("denied", 403, [COUNTY]), ("denied", 403, [XHC, HWC])]
    # Inside the township: imported.
    _, xml3 = national_alert(polygon("东山村", (104.450, 30.600), (104.600, 30.600), (104.600, 30.700),
                                     (104.450, 30.700)))
    assert imported(api, xml3, "ds-dispatcher")["areas"] == [DSC]


# ---------------------------------------------------------------------------- the settings

def test_min_overlap_and_border_tolerance_are_the_sites_settings(api):
    from alerts.cap.areas import match_areas
    from alerts.cap.parse import parse_cap
    from alerts.registry import RegistryView
    from config.alerting import CapSettings

    registry = RegistryView()
    with connect(api.db) as conn:
        registry.refresh(conn)
    e = 0.0001
    _, xml = oasis_alert(polygon("DONGSHAN VILLAGE", (104.450 - e, 30.600 - e), (104.600 + e, 30.600 - e),
                                 (104.600 + e, 30.700 + e), (104.450 - e, 30.700 + e)))
    areas = parse_cap(xml).info().areas
    assert match_areas(registry, areas, CapSettings()) == [DSC]
    # 东山村 is half of 东山镇: with min_overlap 0.5 the township is warned whole.
    assert match_areas(registry, areas, CapSettings(min_overlap=0.5)) == [DS_TOWN]
    # Without a tolerance the 10 m of slack reaches every neighbouring grid (桃园村's two: the
    # village, and with 东山村 all of 东山镇; 西河乡's two grids along the line).
    assert match_areas(registry, areas, CapSettings(border_tolerance_m=0)) == [DS_TOWN, LLS2, XHC2]
    # The site file carries them (cap: {min_overlap, border_tolerance_m}); bad values are refused.
    with pytest.raises(ValueError, match="min_overlap"):
        CapSettings(min_overlap=0)
