"""Live voice (实时喊话) through real parts: an aiortc microphone (devices/sim/mic.py) → the
API's WebRTC answer and MP3 stream → the devices worker's play commands over Mosquitto →
simulated speakers that fetch the stream with their own credentials and decode it (PyAV).
What a speaker played must be the tone that was sent; tiers, receipts, report and audit
are the recorded broadcasts' (devices/broadcast/service.py)."""
from __future__ import annotations

import asyncio
import time
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import numpy as np
import pytest

from config.settings import Settings
from devices.broadcast.service import BroadcastRequest, create_broadcast
from devices.commands import Requester
from devices.sim.mic import ToneTrack, talk
from store.db import connect
from tests.api.conftest import ApiServer, seeded_db  # noqa: F401  (fixture re-exported)
from tests.devices.conftest import fast_settings, provision, query, start_fleet, start_service, wait_for

VILLAGE = "510199101201"            # 东山村: speaker-dsc
FLEET = {"speaker-dsc": "speaker", "speaker-tyc": "speaker"}
TONE_HZ = 1000.0


def dominant_hz(pcm: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(pcm.size)))
    return float(np.fft.rfftfreq(pcm.size, 1 / rate)[int(np.argmax(spectrum))])


@pytest.fixture(scope="module")
def var(tmp_path_factory):
    return tmp_path_factory.mktemp("voice-var")


@pytest.fixture(scope="module")
def hub(seeded_db, mqtt, var, demo_site):
    server = ApiServer(seeded_db, mqtt.url)
    app = server.server.config.app
    app.state.settings = Settings(http_port=server.port, var_dir=var)
    app.state.devices_settings = fast_settings(live_max_s=30)
    provision(mqtt, var, FLEET)
    with server:
        svc = start_service(seeded_db, mqtt, var, http_port=server.port)
        fleet = start_fleet(demo_site, mqtt, var, set(FLEET))
        wait_for(seeded_db, "SELECT count(*) FROM device_availability WHERE device_id = ANY(%s) AND status = 'online'",
                 (list(FLEET),), lambda n: n == len(FLEET))
        yield server, svc, fleet
        fleet.stop()
        svc.stop()


def token(server, user: str) -> str:
    r = httpx.post(f"{server.base_url}/api/auth/login", json={"username": user, "password": "Demo-pass-2026",
                                                                  "token": True})
    assert r.status_code == 200, r.text
    return r.json()["token"]


def receipt(db: str, bid: str, speaker: str = "speaker-dsc", want=("started",), timeout: float = 20.0) -> str:
    return wait_for(db, "SELECT status FROM device_broadcast_receipts WHERE broadcast_id = %s AND speaker_id = %s",
                    (bid, speaker), lambda s: s in want, timeout=timeout)


def listener(fleet, bid: str, speaker: str = "speaker-dsc"):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lst = fleet.devices[speaker].state.get("live", {}).get(bid)
        if lst is not None:
            return lst
        time.sleep(0.05)
    raise AssertionError(f"{speaker} never started listening to {bid}")


def wait_audio(lst, seconds: float, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lst.sample_rate and lst.samples >= seconds * lst.sample_rate:
            return
        time.sleep(0.05)
    raise AssertionError(f"the speaker decoded only {lst.samples} samples (HTTP {lst.status}, {lst.bytes} bytes)")


def test_the_speaker_plays_the_tone_and_the_broadcast_is_reported_and_audited(hub, seeded_db):
    server, _, fleet = hub
    tok = token(server, "ds-dispatcher")

    async def scenario():
        mic = await talk(server.base_url, tok, [VILLAGE], ToneTrack(TONE_HZ))
        assert await mic.connected(), "the microphone's WebRTC connection did not come up"
        bid = mic.broadcast_id
        await asyncio.to_thread(receipt, seeded_db, bid)
        lst = await asyncio.to_thread(listener, fleet, bid)
        await asyncio.to_thread(wait_audio, lst, 2.0)
        assert await mic.stop() == 200
        return mic.answer, lst

    answer, lst = asyncio.run(scenario())
    bid = answer["broadcast_id"]
    assert answer["priority"] == 7 and answer["kind"] == "notice"       # a live shout is urgent by default
    assert receipt(seeded_db, bid, want=("finished",)) == "finished"
    assert wait_for(seeded_db, "SELECT state FROM device_broadcasts WHERE id = %s", (bid,),
                    lambda s: s in ("done", "partial", "failed")) == "done"
    pcm = lst.pcm()
    assert lst.sample_rate == 48_000
    # what the speaker decoded is the microphone's tone (skip the first 0.2 s: encoder start-up)
    assert abs(dominant_hz(pcm[lst.sample_rate // 5:], lst.sample_rate) - TONE_HZ) < 10
    assert float(np.sqrt(np.mean(pcm ** 2))) > 0.1                    # and it is loud, not a whisper
    (body,) = query(seeded_db, "SELECT body FROM device_commands WHERE broadcast_id = %s", (bid,))[0]
    url = urlsplit(body["audio_url"])
    assert body["live"] is True and url.path == f"/api/broadcasts/{bid}/live.mp3"
    link = parse_qs(url.query)          # a short-lived link signed for this speaker (store/links.py)
    assert link["sub"] == ["speaker-dsc"] and link["sig"] and 0 < int(link["exp"][0]) - time.time() < 120
    assert body["media_type"] == "audio/mpeg"
    actions = [a for (a,) in query(seeded_db, "SELECT action FROM audit_log WHERE target = %s ORDER BY id", (bid,))]
    assert actions[:2] == ["broadcast.live.start", "broadcast.live.stop"] and "broadcast.completed" in actions
    assert query(seeded_db, "SELECT actor, detail->'targets' FROM audit_log WHERE action = 'broadcast.live.start' "
                            "AND target = %s", (bid,)) == [("ds-dispatcher", [VILLAGE])]
    r = httpx.get(f"{server.base_url}/api/broadcasts/{bid}/report", headers={"Authorization": f"Bearer {tok}"})
    assert r.json()["heard"] == [{"code": VILLAGE, "name": "东山村"}]


def test_an_emergency_warning_interrupts_live_voice(hub, seeded_db):
    server, _, fleet = hub
    tok = token(server, "ds-dispatcher")

    async def scenario():
        mic = await talk(server.base_url, tok, [VILLAGE], ToneTrack(TONE_HZ))
        await asyncio.to_thread(receipt, seeded_db, mic.broadcast_id)
        lst = await asyncio.to_thread(listener, fleet, mic.broadcast_id)
        with connect(seeded_db) as conn:
            warning = create_broadcast(conn, BroadcastRequest(targets=[VILLAGE], kind="emergency",
                                                              text="山洪预警，请立即转移。", duration_s=0.5),
                                       Requester("cap:test", "system", None, "510199101000"))
        await asyncio.to_thread(receipt, seeded_db, mic.broadcast_id, "speaker-dsc", ("preempted",))
        await asyncio.to_thread(wait_for, seeded_db, "SELECT state FROM device_broadcasts WHERE id = %s",
                                (warning["id"],), lambda s: s == "done")
        await mic.stop()
        return mic.broadcast_id, lst

    bid, lst = asyncio.run(scenario())
    assert lst.stopped                       # the speaker hung up on the live stream
    (report,) = query(seeded_db, "SELECT report FROM device_broadcasts WHERE id = %s", (bid,))[0]
    assert report["not_heard"][0]["reasons"] == ["被更高优先级广播打断"]


def test_live_emergency_voice_interrupts_a_playing_notice(hub, seeded_db):
    server, _, fleet = hub
    with connect(seeded_db) as conn:
        notice = create_broadcast(conn, BroadcastRequest(targets=[VILLAGE], kind="notice", priority="urgent",
                                                         text="本周六停水通知。", duration_s=20),
                                  Requester("ds-dispatcher", "user", "dispatcher", "510199101000"))
    receipt(seeded_db, notice["id"])
    tok = token(server, "ds-dispatcher")

    async def scenario():
        mic = await talk(server.base_url, tok, [VILLAGE], ToneTrack(TONE_HZ), kind="emergency")
        await asyncio.to_thread(receipt, seeded_db, notice["id"], "speaker-dsc", ("preempted",))
        status = await asyncio.to_thread(receipt, seeded_db, mic.broadcast_id)
        # the speaker hears the voice before the operator lets go (a shout that carried no audio
        # ends as failed: nobody heard anything)
        lst = await asyncio.to_thread(listener, fleet, mic.broadcast_id)
        await asyncio.to_thread(wait_audio, lst, 0.5)
        await mic.stop()
        return mic, status

    mic, status = asyncio.run(scenario())
    assert mic.answer["priority"] == 9 and status == "started"
    assert receipt(seeded_db, mic.broadcast_id, want=("finished", "failed")) == "finished"


def test_refusals_name_what_is_wrong_and_record_nothing(hub, seeded_db):
    server, _, _ = hub
    other = token(server, "xh-dispatcher")           # 西河镇: 东山村 is not theirs
    supervisor = token(server, "ds-supervisor")      # may not broadcast
    before = query(seeded_db, "SELECT count(*) FROM device_broadcasts WHERE live")[0][0]

    async def offer(tok, **fields):
        try:
            await talk(server.base_url, tok, [VILLAGE], ToneTrack(TONE_HZ), **fields)
        except httpx.HTTPStatusError as exc:
            return exc.response
        raise AssertionError("the hub accepted it")

    assert asyncio.run(offer(other)).status_code == 404
    assert asyncio.run(offer(supervisor)).status_code == 403
    bad = asyncio.run(offer(token(server, "ds-dispatcher"), priority=9))
    assert bad.status_code == 400 and "9 仅用于应急预警" in bad.json()["detail"]
    assert query(seeded_db, "SELECT count(*) FROM device_broadcasts WHERE live")[0][0] == before
    r = httpx.post(f"{server.base_url}/api/broadcasts/live", headers={"Authorization": f"Bearer {supervisor}"},
                   json={"sdp": "v=0\r\nno audio here", "targets": [VILLAGE]})
    assert r.status_code == 403
    r = httpx.post(f"{server.base_url}/api/broadcasts/live",
                   headers={"Authorization": f"Bearer {token(server, 'ds-dispatcher')}"},
                   json={"sdp": "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n",
                         "targets": [VILLAGE]})
    assert r.status_code == 422 and "no audio" in r.json()["detail"]


def test_the_stream_is_only_for_signed_links_to_its_listeners(hub, seeded_db, var):
    """live.mp3 opens only with a short-lived link signed for one listener (HMAC over path,
    expiry and listener with the hub's media key): unsigned, expired, re-addressed or altered
    links are refused with the reason in Chinese; a person's link needs that person too."""
    from devices.credentials import DeviceSecrets
    from store.links import LinkSigner
    server, _, fleet = hub
    tok = token(server, "ds-dispatcher")
    pw = DeviceSecrets.for_var_dir(var).passwords()
    signer = LinkSigner.for_var_dir(var)

    async def scenario():
        mic = await talk(server.base_url, tok, [VILLAGE], ToneTrack(TONE_HZ))
        await asyncio.to_thread(receipt, seeded_db, mic.broadcast_id)
        path = f"/api/broadcasts/{mic.broadcast_id}/live.mp3"
        url = server.base_url + path
        good = dict(parse_qs(urlsplit(signer.sign(path, 30, sub="speaker-dsc")).query))
        good = {k: v[0] for k, v in good.items()}
        got = {}
        async with httpx.AsyncClient(timeout=5) as c:
            # a speaker's own password no longer opens it without a link
            got["unsigned"] = await c.get(url, auth=("speaker-dsc", pw["speaker-dsc"]))
            got["expired"] = await c.get(server.base_url + signer.sign(path, 30, sub="speaker-dsc",
                                                                       now=time.time() - 60))
            got["readdressed"] = await c.get(f"{url}?{urlencode({**good, 'sub': 'speaker-tyc'})}")
            got["tampered"] = await c.get(f"{url}?{urlencode({**good, 'exp': int(good['exp']) + 3600})}")
            got["not_told"] = await c.get(server.base_url + signer.sign(path, 30, sub="speaker-tyc"))  # 桃园村
            got["other_user"] = await c.get(server.base_url + mic.answer["stream_path"],
                                            headers={"Authorization": f"Bearer {token(server, 'ds-supervisor')}"})
            got["no_session"] = await c.get(server.base_url + mic.answer["stream_path"])
            async with c.stream("GET", server.base_url + mic.answer["stream_path"],
                                headers={"Authorization": f"Bearer {tok}"}) as r:  # monitoring, 监听
                got["monitor"] = (r.status_code, r.headers["content-type"], len(await anext(r.aiter_raw())))
            async with c.stream("GET", f"{url}?{urlencode(good)}") as r:            # the speaker's link
                got["speaker"] = (r.status_code, len(await anext(r.aiter_raw())))
        await mic.stop()
        async with httpx.AsyncClient(timeout=5) as c:
            got["after"] = await c.get(f"{url}?{urlencode(good)}")
        return got

    got = asyncio.run(scenario())
    assert got["unsigned"].status_code == 403 and "链接未签名" in got["unsigned"].json()["detail"]
    assert got["expired"].status_code == 403 and "链接已过期" in got["expired"].json()["detail"]
    for k in ("readdressed", "tampered"):
        assert got[k].status_code == 403 and "签名无效或已被篡改" in got[k].json()["detail"], k
    assert got["not_told"].status_code == 404
    assert got["other_user"].status_code == 403 and "属于其他用户" in got["other_user"].json()["detail"]
    assert got["no_session"].status_code == 401
    assert got["monitor"][0] == 200 and got["monitor"][1] == "audio/mpeg" and got["monitor"][2] > 0
    assert got["speaker"][0] == 200 and got["speaker"][1] > 0
    assert got["after"].status_code == 410 and "实时喊话已结束" in got["after"].json()["detail"]
    refused = query(seeded_db, "SELECT detail->>'reason' FROM audit_log WHERE outcome = 'denied' "
                               "AND detail->>'path' LIKE %s", ("%/live.mp3",))
    assert any("链接已过期" in r for (r,) in refused) and any("篡改" in r for (r,) in refused)