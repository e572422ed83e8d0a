"""Open311 GeoReport v2 conformance against the real API server: the discovery document,
both formats (JSON and the spec's XML) for services, definitions, requests (list and one),
POST answers and errors; keyed and keyless reads and their scope (一级一权限); list
parameters; placing a request by address; media_url kept; jurisdiction_id checked; case
numbers without gaps. The client is `georeport` from PyPI (nobody here wrote it), parsing
XML with xmltodict; the rest talk HTTP as a client would."""
from __future__ import annotations

import os

import httpx
import pytest
import requests
import xmltodict
from georeport import GeoReport

from store import identity
from store.db import connect
from tests.alerts.conftest import one, write_site
from tests.api.conftest import ApiServer

COUNTY, TOWNSHIP_DS, TOWNSHIP_XH = "510199000000", "510199101000", "510199201000"
VILLAGE_DSC, GRID_DSC1, VILLAGE_XH = "510199101201", "510199101201001", "510199201201"
DSC1_POINT = {"lat": "30.65", "long": "104.49"}          # inside 东山村第一网格


@pytest.fixture(scope="module")
def site(seeded_db, tmp_path_factory):
    path = write_site(tmp_path_factory.mktemp("open311") / "site.yaml")
    saved = os.environ.get("XLHUB_SITE_FILE")
    os.environ["XLHUB_SITE_FILE"] = str(path)
    yield path
    if saved is None:
        os.environ.pop("XLHUB_SITE_FILE", None)
    else:
        os.environ["XLHUB_SITE_FILE"] = saved


@pytest.fixture(scope="module")
def server(seeded_db, mqtt, site):
    with ApiServer(seeded_db, mqtt.url) as api:
        api.db = seeded_db
        yield api


@pytest.fixture(scope="module")
def keys(seeded_db):
    with connect(seeded_db) as conn:
        return {name: identity.create_api_token(conn, name=f"open311-{name}", role=role, node_code=node,
                                                created_by="test")
                for name, role, node in (("county", "hotline", COUNTY), ("ds", "dispatcher", TOWNSHIP_DS),
                                         ("xh", "dispatcher", TOWNSHIP_XH), ("admin", "admin", COUNTY))}


def v2(server) -> str:
    return f"{server.base_url}/open311/v2"


def post(server, key, fmt="json", **fields) -> httpx.Response:
    return httpx.post(f"{v2(server)}/requests.{fmt}", data={"api_key": key, **fields}, timeout=10)


def submit(server, key, **fields) -> str:
    r = post(server, key, **{"service_code": "city", "description": "村口路灯不亮", **DSC1_POINT, **fields})
    assert r.status_code == 200, r.text
    return r.json()[0]["service_request_id"]


def xml(r: httpx.Response) -> dict:
    assert r.headers["content-type"].startswith("text/xml"), r.headers["content-type"]
    return xmltodict.parse(r.content)


def spec_error(r: httpx.Response, status: int, fmt: str = "json") -> str:
    """The spec's error document: [{"code", "description"}] or <errors><error>…; its description."""
    assert r.status_code == status, r.text
    if fmt == "xml":
        err = xml(r)["errors"]["error"]
    else:
        [err] = r.json()
    assert int(err["code"]) == status and err["description"], err
    return err["description"]


# ---------------------------------------------------------------------------- discovery, services

def test_discovery_in_both_formats_without_a_key(server):
    for path in ("/open311/discovery", "/open311/v2/discovery"):
        doc = httpx.get(f"{server.base_url}{path}.json").json()
        [endpoint] = doc["endpoints"]
        assert endpoint["url"] == v2(server) and endpoint["specification"] == "http://wiki.open311.org/GeoReport_v2"
        assert set(endpoint["formats"]) == {"text/xml", "application/json"} and doc["key_service"]
        doc = xml(httpx.get(f"{server.base_url}{path}.xml"))["discovery"]
        assert doc["endpoints"]["endpoint"]["url"] == v2(server)
        assert doc["endpoints"]["endpoint"]["formats"]["format"] == ["text/xml", "application/json"]


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_georeport_client_reads_services_and_definitions(server, fmt):
    client = GeoReport(v2(server), jurisdiction=COUNTY, output_format=fmt)
    services = client.get_service_list()
    assert {s["service_code"] for s in services} == {"public_order", "hazard", "dispute", "city", "sentiment"}
    city = next(s for s in services if s["service_code"] == "city")
    assert city["service_name"] == "城市管理" and str(city["metadata"]).lower() == "false"
    assert client.get_service_definition("city")["service_code"] == "city"
    with pytest.raises(requests.HTTPError) as refused:
        client.get_service_definition("no-such-service")
    assert refused.value.response.status_code == 404


# ---------------------------------------------------------------------------- requests: keyed

@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_keyed_reads_with_api_key_or_bearer_in_both_formats(server, keys, fmt):
    number = submit(server, keys["ds"], first_name="李", last_name="四", phone="13900000000",
                    email="li@example.cn")
    for how in ({"params": {"api_key": keys["ds"]}}, {"headers": {"Authorization": f"Bearer {keys['ds']}"}}):
        one_r = httpx.get(f"{v2(server)}/requests/{number}.{fmt}", **how)
        listed = httpx.get(f"{v2(server)}/requests.{fmt}", **how)
        assert one_r.status_code == listed.status_code == 200, (one_r.text, listed.text)
        if fmt == "xml":
            got = xml(one_r)["service_requests"]["request"]
            items = xml(listed)["service_requests"]["request"]
            numbers = [x["service_request_id"] for x in (items if isinstance(items, list) else [items])]
        else:
            [got] = one_r.json()
            numbers = [x["service_request_id"] for x in listed.json()]
        assert (got["service_request_id"], got["status"], got["service_code"]) == (number, "open", "city")
        assert got["status_notes"] == "待受理" and got["agency_responsible"] == "东山镇"
        assert got["requested_datetime"].endswith("+08:00") and got["description"] == "村口路灯不亮"
        assert number in numbers
        # personal data never leaves through Open311, keyed or not
        for text in (one_r.text, listed.text):
            assert "13900000000" not in text and "li@example.cn" not in text and "李" not in text


def test_keyed_reads_stay_in_the_callers_subtree(server, keys):
    number = submit(server, keys["ds"])
    assert spec_error(httpx.get(f"{v2(server)}/requests/{number}.json", params={"api_key": keys["xh"]}), 404)
    listed = httpx.get(f"{v2(server)}/requests.json", params={"api_key": keys["xh"]}).json()
    assert number not in [x["service_request_id"] for x in listed]
    listed = httpx.get(f"{v2(server)}/requests.json", params={"api_key": keys["xh"], "service_request_id": number})
    assert listed.status_code == 200 and listed.json() == []
    # a role that reads no cases is refused in the spec's format
    assert "lacks permission" in spec_error(httpx.get(f"{v2(server)}/requests.json",
                                                      params={"api_key": keys["admin"]}), 403)


def test_service_code_and_status_take_lists(server, keys):
    city = submit(server, keys["ds"])
    hazard = submit(server, keys["ds"], service_code="hazard", description="河堤有裂缝")
    dispute = submit(server, keys["ds"], service_code="dispute", description="邻里纠纷")
    r = httpx.get(f"{v2(server)}/requests.json", params={"api_key": keys["ds"], "service_code": "hazard,city",
                                                         "status": "open,closed"})
    assert r.status_code == 200, r.text
    numbers = {x["service_request_id"] for x in r.json()}
    assert {city, hazard} <= numbers and dispute not in numbers
    client_err = httpx.get(f"{v2(server)}/requests.json", params={"api_key": keys["ds"], "service_code": "city,x"})
    assert "unknown service_code" in spec_error(client_err, 400)


def test_keyless_reads_of_requests_are_refused_by_default(server):
    client = GeoReport(v2(server), output_format="json")
    with pytest.raises(requests.HTTPError) as refused:
        client.get_service_requests()
    assert refused.value.response.status_code == 401
    assert "api_key" in spec_error(httpx.get(f"{v2(server)}/requests.xml"), 401, "xml")


# ---------------------------------------------------------------------------- requests: keyless, public

@pytest.fixture(scope="module")
def public_server(seeded_db, mqtt, site):
    os.environ["XLHUB_OPEN311_PUBLIC_NODE"] = TOWNSHIP_DS
    try:
        with ApiServer(seeded_db, mqtt.url) as api:
            yield api
    finally:
        os.environ.pop("XLHUB_OPEN311_PUBLIC_NODE", None)


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_keyless_reads_show_public_requests_without_personal_data(public_server, keys, fmt):
    city = submit(public_server, keys["ds"], description="路灯不亮，联系我 13700000000",
                  address_string="东山村村口张三家门前", media_url="https://img.example.cn/a.jpg", phone="13700000000")
    dispute = submit(public_server, keys["ds"], service_code="dispute", description="邻里纠纷")
    xihe = submit(public_server, keys["xh"], service_code="city", description="西河村路灯", lat="", long="",
                  address_id=VILLAGE_XH)
    client = GeoReport(v2(public_server), output_format=fmt)     # sends no key on reads
    items = client.get_service_requests(service_code="city,dispute")
    items = items if isinstance(items, list) else [items]
    numbers = {x["service_request_id"] for x in items}
    assert city in numbers and dispute not in numbers and xihe not in numbers
    got = client.get_service_request(city)
    if isinstance(got, list):
        [got] = got
    assert got["status"] == "open" and got["service_code"] == "city"
    assert not got.get("description") and not got.get("address") and not got.get("media_url")
    assert float(got["lat"]) == 30.65
    texts = httpx.get(f"{v2(public_server)}/requests.{fmt}").text + \
        httpx.get(f"{v2(public_server)}/requests/{city}.{fmt}").text
    assert "13700000000" not in texts and "张三" not in texts and "img.example.cn" not in texts
    with pytest.raises(requests.HTTPError) as hidden:
        client.get_service_request(dispute)
    assert hidden.value.response.status_code == 404


# ---------------------------------------------------------------------------- POST

@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_post_answers_in_both_formats(server, keys, fmt):
    r = post(server, keys["ds"], fmt, service_code="city", description="井盖缺失", **DSC1_POINT)
    assert r.status_code == 200, r.text
    got = xml(r)["service_requests"]["request"] if fmt == "xml" else r.json()[0]
    assert got["service_request_id"].startswith("XL") and "已受理" in got["service_notice"]
    case = one(server.db, "SELECT * FROM cases WHERE number = %s", (got["service_request_id"],))
    assert (case["channel"], case["grid_code"]) == ("open311", GRID_DSC1)
    assert spec_error(post(server, keys["ds"], fmt, service_code="city"), 400, fmt)       # no description
    assert spec_error(post(server, "no-such-key", fmt, service_code="city", description="x", **DSC1_POINT), 401, fmt)


def test_json_body_service_code_as_a_list(server, keys):
    body = {"api_key": keys["ds"], "description": "路灯", "lat": 30.65, "long": 104.49}
    r = httpx.post(f"{v2(server)}/requests.json", json={**body, "service_code": ["city"]})
    assert r.status_code == 200, r.text
    assert one(server.db, "SELECT category FROM cases WHERE number = %s",
               (r.json()[0]["service_request_id"],))["category"] == "city"
    r = httpx.post(f"{v2(server)}/requests.json", json={**body, "service_code": ["city", "hazard"]})
    assert "one value" in spec_error(r, 400)
    r = httpx.post(f"{v2(server)}/requests.json", json={**body, "service_code": {"code": "city"}})
    assert "service_code" in spec_error(r, 400)


def test_address_instead_of_coordinates(server, keys):
    # an address naming a village: placed there
    number = submit(server, keys["ds"], lat="", long="", address_string="东山镇东山村村口老槐树下")
    case = one(server.db, "SELECT * FROM cases WHERE number = %s", (number,))
    assert (case["grid_code"], case["lat"], case["address"]) == (VILLAGE_DSC, None, "东山镇东山村村口老槐树下")
    assert not case["title"].startswith("[待定位]")
    # address_id: a grid node's code
    case = one(server.db, "SELECT * FROM cases WHERE number = %s",
               (submit(server, keys["ds"], lat="", long="", address_id=GRID_DSC1),))
    assert case["grid_code"] == GRID_DSC1
    # an address naming no grid node: raised at the caller's node for a person to place
    r = post(server, keys["ds"], service_code="city", description="路灯坏了", address_string="老街口")
    assert r.status_code == 200, r.text
    assert "确认位置" in r.json()[0]["service_notice"]
    case = one(server.db, "SELECT * FROM cases WHERE number = %s", (r.json()[0]["service_request_id"],))
    assert (case["grid_code"], case["title"], case["state"]) == (TOWNSHIP_DS, "[待定位] 路灯坏了", "reported")
    # another township's village: outside the caller's area
    r = post(server, keys["ds"], service_code="city", description="路灯", address_string="西河村桥头")
    assert "outside your area" in spec_error(r, 404)
    # nothing to place it by
    assert "location is required" in spec_error(post(server, keys["ds"], service_code="city", description="x"), 400)


def test_media_url_is_kept_as_the_cases_media_link(server, keys):
    url = "https://img.example.cn/requests/1.jpg"
    number = submit(server, keys["ds"], media_url=url)
    case = one(server.db, "SELECT * FROM cases WHERE number = %s", (number,))
    assert case["description"] == "村口路灯不亮"                         # not folded into the text
    assert one(server.db, "SELECT ref, kind FROM case_evidence WHERE case_id = %s", (case["id"],)) == \
        {"ref": url, "kind": "media"}
    [got] = httpx.get(f"{v2(server)}/requests/{number}.json", params={"api_key": keys["ds"]}).json()
    assert got["media_url"] == url
    assert "http or https" in spec_error(post(server, keys["ds"], service_code="city", description="x",
                                              media_url="javascript:alert(1)", **DSC1_POINT), 400)


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_jurisdiction_id_is_checked(server, keys, fmt):
    assert httpx.get(f"{v2(server)}/services.{fmt}", params={"jurisdiction_id": COUNTY}).status_code == 200
    assert "jurisdiction_id" in spec_error(httpx.get(f"{v2(server)}/services.{fmt}",
                                                     params={"jurisdiction_id": "sfgov.org"}), 400, fmt)
    r = post(server, keys["ds"], fmt, jurisdiction_id="sfgov.org", service_code="city", description="x",
             **DSC1_POINT)
    assert "jurisdiction_id" in spec_error(r, 400, fmt)
    submit(server, keys["ds"], jurisdiction_id=COUNTY)


def test_unknown_urls_answer_in_the_spec_error_format(server):
    assert spec_error(httpx.get(f"{v2(server)}/nothing-here.xml"), 404, "xml")
    assert spec_error(httpx.get(f"{v2(server)}/services.csv"), 404)
    assert spec_error(httpx.delete(f"{v2(server)}/services.json"), 405)


def test_case_numbers_have_no_gaps_after_failed_requests(server, keys):
    """A request refused after its case row was written (here: evidence that does not exist)
    rolls back and gives its number back."""
    first = submit(server, keys["ds"])
    r = httpx.post(f"{server.base_url}/api/cases", headers={"Authorization": f"Bearer {keys['ds']}"},
                   json={"title": "证据不存在", "category": "city", "urgency": "low", "grid_code": GRID_DSC1,
                         "evidence_ids": ["01ZZZZZZZZZZZZZZZZZZZZZZZZ"]})
    assert r.status_code == 404, r.text
    for bad in ({"service_code": ["city", "hazard"]}, {"lat": 10, "long": 10}):
        httpx.post(f"{v2(server)}/requests.json", json={"api_key": keys["ds"], "service_code": "city",
                                                        "description": "x", **DSC1_POINT, **bad})
    second = submit(server, keys["ds"])
    assert int(second.rsplit("-", 1)[1]) == int(first.rsplit("-", 1)[1]) + 1, (first, second)
