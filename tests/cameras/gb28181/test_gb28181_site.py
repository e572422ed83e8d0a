"""The site file's gb28181 section goes through the same checks as `xlhub check-config`."""
from __future__ import annotations

import yaml

from config.settings import DEMO_SITE_FILE
from config.site.loader import check_site_file


def _with(tmp_path, gb, cam_url=None):
    data = yaml.safe_load(DEMO_SITE_FILE.read_text())
    data["gb28181"] = gb
    if cam_url:
        data["cameras"][0]["rtsp_url"] = cam_url
    p = tmp_path / "site.yaml"
    p.write_text(yaml.safe_dump(data, allow_unicode=True))
    return check_site_file(p)


def test_good_section_and_gb_url(tmp_path):
    site, problems = _with(tmp_path, {"sip_id": "51019900002000000001", "domain": "5101990000",
                                      "placement": [{"civil_code": "510199101", "grid": "510199101201"}]},
                           "gb28181://51019910111320000001/51019910111320000002")
    assert problems == [] and site.gb28181.place("x", "51019910111320000002", "r") == "510199101201"


def test_bad_section_named(tmp_path):
    _, problems = _with(tmp_path, {"sip_id": "123", "domain": "5101990000",
                                   "placement": [{"device": "51019910111320000001", "grid": "999"}]},
                        "gb28181://1/2")
    text = " | ".join(str(p) for p in problems)
    assert "20 digits" in text and "999" in text and "gb28181://<20-digit device ID>" in text


UPPER = {"sip_id": "51000000002000000001", "domain": "5100000000", "host": "10.1.2.3", "port": 5060,
         "credentials": "demo-cams", "share": ["510199101000"]}


def test_upstream_section_checked_with_the_site_file(tmp_path):
    gb = {"sip_id": "51019900002000000001", "domain": "5101990000"}
    site, problems = _with(tmp_path, {**gb, "upstream": [UPPER]})
    assert problems == [] and site.gb28181.upstream[0].share == ["510199101000"]
    assert site.gb28181.upstream[0].transport == "udp" and site.gb28181.upstream[0].expires == 3600

    _, problems = _with(tmp_path, {**gb, "upstream": [{**UPPER, "credentials": "nobody", "share": ["999"]}]})
    text = " | ".join(str(p) for p in problems)
    assert "upstream[0].credentials: unknown credentials 'nobody'" in text, text
    assert "upstream[0].share[0]: unknown grid node '999'" in text, text
    _, problems = _with(tmp_path, {**gb, "upstream": [{**UPPER, "transport": "sctp"}]})
    assert "transport: must be 'udp' or 'tcp'" in " | ".join(str(p) for p in problems)

    # a password written inline is refused: by reference to a credentials entry only
    _, problems = _with(tmp_path, {**gb, "upstream": [{**UPPER, "password": "secret"}]})
    text = " | ".join(str(p) for p in problems)
    assert "upstream[0].password: unknown key 'password'" in text and "secret" not in text, text


def test_media_transport_per_device(tmp_path):
    """The site file says how a device's media comes (live and NVR playback alike); what it does
    not name keeps the default rule (registered over TCP → tcp-passive, else the media setting)."""
    from types import SimpleNamespace

    from cameras.gb28181.process import media_transport

    gb = {"sip_id": "51019900002000000001", "domain": "5101990000"}
    nvr, ipc = "51019910111180000001", "51019910111320000001"
    site, problems = _with(tmp_path, {**gb, "media_transport": {nvr: "tcp-active"}})
    assert problems == []
    over = lambda t: SimpleNamespace(peer=SimpleNamespace(transport=t))     # noqa: E731 - a registered device
    assert media_transport(site.gb28181, over("udp"), nvr) == "tcp-active"
    assert media_transport(site.gb28181, over("tcp"), nvr) == "tcp-active"      # the site file wins
    assert media_transport(site.gb28181, over("tcp"), ipc) == "tcp-passive"
    assert media_transport(site.gb28181, over("udp"), ipc) is None and media_transport(site.gb28181, None, ipc) is None

    _, problems = _with(tmp_path, {**gb, "media_transport": {nvr: "tcp", "123": "udp"}})
    text = " | ".join(str(p) for p in problems)
    assert "media_transport" in text and "tcp-active" in text and "20 digits" in text, text
