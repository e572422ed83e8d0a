"""A second GB/T 28181 peer not written by us: SIPp (Debian's sip-tester) registers with its
own digest implementation, sends Keepalive and Catalog MESSAGEs, then plays the device's UAS
answering the hub's INVITE with SDP."""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from cameras.gb28181 import registry
from cameras.gb28181.passwords import GbPasswords
from cameras.gb28181.server import GbServer
from cameras.gb28181.session import MediaOffer
from cameras.gb28181.settings import GbSettings
from config.gb28181 import GbSite
from store.db import connect
from store.secrets import SecretBox, derive_key

HERE = Path(__file__).parent / "sipp"
HUB_ID, DOMAIN = "51019900002000000001", "5101990000"
DEV = "51019910111320000050"
SIPP = shutil.which("sipp")
# scripts/setup installs Debian's sip-tester: without it this is a broken set-up, not a skip
assert SIPP, "sipp not found: run scripts/setup (it installs Debian's sip-tester)"


def free_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def sipp(scenario: str, hub_port: int, local_port: int, *extra: str, timeout: float = 20) -> subprocess.Popen:
    return subprocess.Popen(
        [SIPP, f"127.0.0.1:{hub_port}", "-sf", str(HERE / scenario), "-i", "127.0.0.1", "-p", str(local_port),
         "-s", DEV, "-set", "hub", HUB_ID, "-set", "domain", DOMAIN, "-m", "1", "-timeout", f"{int(timeout)}s",
         "-timeout_error", "-nostdin", "-nd", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=str(HERE.parent))


def sipp_hub(site_db, tmp_path) -> tuple[GbServer, GbPasswords]:
    """The hub's SIP server (UDP) for a SIPp device, started, and its password store. SIPp's
    devices answer no DeviceInfo/Catalog query: none is sent after REGISTER, so a UAS scenario
    sees only what the test asks of it."""
    pw = GbPasswords(tmp_path, SecretBox(derive_key("test-master-key-0123456789")))
    server = GbServer(GbSite(sip_id=HUB_ID, domain=DOMAIN), GbSettings(host="127.0.0.1", port=0, tcp=False),
                      site_db, pw, root_code="510199000000")

    async def no_queries(device_id):
        return None
    server._after_register = no_queries
    server.start()
    return server, pw


def admit_sipp_device(site_db, pw: GbPasswords) -> tuple[str, int]:
    """DEV admitted with a fresh password; the password and a free local port for SIPp."""
    with connect(site_db) as conn:
        registry.admit(conn, DEV, by="test")
    return pw.set(DEV), free_udp_port()


def test_sipp_registers_keeps_alive_and_answers_invite(site_db, tmp_path):
    server, pw = sipp_hub(site_db, tmp_path)
    try:
        password, port = admit_sipp_device(site_db, pw)
        uac = sipp("register_keepalive.xml", server.port, port, "-au", DEV, "-ap", password)
        out, _ = uac.communicate(timeout=30)
        assert uac.returncode == 0, out.decode(errors="replace")[-2000:]
        assert DEV in server.devices and server.devices[DEV].online
        with connect(site_db) as conn:
            row = conn.execute("SELECT state, last_keepalive, charset FROM gb_devices WHERE id = %s", (DEV,)).fetchone()
        assert row["state"] == "registered" and row["charset"] in ("GB2312", "UTF-8")

        # wrong password: SIPp's digest with another password is refused (403 ends its scenario in error)
        bad = sipp("register_keepalive.xml", server.port, free_udp_port(), "-au", DEV, "-ap", "wrong")
        bad.communicate(timeout=30)
        assert bad.returncode != 0

        # SIPp as the device's UAS on the port it registered from
        uas = subprocess.Popen(
                [SIPP, "-sf", str(HERE / "uas_invite.xml"), "-i", "127.0.0.1", "-p", str(port), "-s", DEV,
                 "-m", "1", "-timeout", "20s", "-timeout_error", "-nostdin", "-nd"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(0.5)
        ssrc = server.next_ssrc()
        try:
            answer = server.play(DEV, "51019910111320000051", MediaOffer("127.0.0.1", 40000, "udp", ssrc))
        except Exception:
            uas.kill()
            print(uas.communicate()[0].decode(errors="replace")[-3000:])
            raise
        assert (answer.host, answer.port, answer.ssrc, answer.codec) == ("127.0.0.1", 30555, ssrc, "ps")
        server.bye(answer)
        out, _ = uas.communicate(timeout=25)
        assert uas.returncode == 0, out.decode(errors="replace")[-2000:]
    finally:
        server.stop()


def test_sipp_nvr_answers_record_info_in_two_packets(site_db, tmp_path):
    """RecordInfo with a device not written by us: SIPp's NVR answers the query in two MESSAGEs."""
    from datetime import datetime, timedelta

    from cameras.gb28181 import manscdp

    server, pw = sipp_hub(site_db, tmp_path)
    try:
        password, port = admit_sipp_device(site_db, pw)
        uac = sipp("register_keepalive.xml", server.port, port, "-au", DEV, "-ap", password)
        out, _ = uac.communicate(timeout=30)
        assert uac.returncode == 0, out.decode(errors="replace")[-2000:]
        uas = subprocess.Popen(
                [SIPP, "-sf", str(HERE / "uas_record_info.xml"), "-i", "127.0.0.1", "-p", str(port), "-s", DEV,
                 "-set", "hub", HUB_ID, "-set", "domain", DOMAIN, "-m", "1", "-timeout", "20s", "-timeout_error",
                 "-nostdin", "-nd"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(0.5)
        day = datetime(2026, 12, 6).astimezone()            # GB time: the local clock, no offset
        try:
            items = server.record_info(DEV, "51019910111320000051", day, day + timedelta(days=1), timeout_s=10)
        except Exception:
            uas.kill()
            print(uas.communicate()[0].decode(errors="replace")[-3000:])
            raise
        assert [(i.start, i.end, i.type) for i in items] == [
            (day + timedelta(hours=8), day + timedelta(hours=8, minutes=30), "time"),
            (day + timedelta(hours=8, minutes=30), day + timedelta(hours=9), "alarm"),
            (day + timedelta(hours=10), day + timedelta(hours=10, minutes=15), "manual")]
        assert items[0].name == "SIPp录像机" and items[2].file_path == "/mnt/hdd1/0003.mp4"
        assert isinstance(items[0], manscdp.RecordItem)
        out, _ = uas.communicate(timeout=25)
        assert uas.returncode == 0, out.decode(errors="replace")[-2000:]
    finally:
        server.stop()


def sipp_nvr_playback(site_db, tmp_path, transport: str, scenario: str, *, speed: int | None = None,
                      control=None, seconds: int = 3) -> tuple[dict, object]:
    """SIPp (``scenario``) as an NVR answering the hub's playback INVITE over TCP media (a=setup
    from ``transport``), FFmpeg's own PS muxer (``-f vob``) feeding ``seconds`` of test pattern.
    ``control(client, session)`` runs while the stream plays. Returns what the viewer got
    (``headers``, ``data``) and the ended DeviceStream; SIPp's scenario must have passed."""
    import threading
    from datetime import UTC, datetime, timedelta

    from cameras.gb28181.media.sender import PsRtpSender, testsrc
    from cameras.gb28181.playback import DevicePlayback, PlaybackClient

    server, pw = sipp_hub(site_db, tmp_path)
    key = b"s" * 32
    svc = DevicePlayback(server, key, transport_of=lambda device, channel: transport).start()
    client = PlaybackClient(svc.address, key)
    ssrc = "1019900077"
    sender = None
    try:
        password, port = admit_sipp_device(site_db, pw)
        uac = sipp("register_keepalive.xml", server.port, port, "-au", DEV, "-ap", password)
        out, _ = uac.communicate(timeout=30)
        assert uac.returncode == 0, out.decode(errors="replace")[-2000:]
        media = testsrc(fps=10, clock=False) + ["-t", str(seconds)]
        if transport == "tcp-active":           # the hub connects: the device listens first
            sender = PsRtpSender(MediaOffer("127.0.0.1", 9, "tcp-active", ssrc), ffmpeg_args=media, mux="ffmpeg")
            mport, setup = sender.start().port, "passive"
        else:
            mport, setup = 9, "active"
        portfile = tmp_path / "offer-port"
        uas = subprocess.Popen(
                [SIPP, "-sf", str(HERE / scenario), "-i", "127.0.0.1", "-p", str(port), "-s", DEV,
                 "-set", "hub", HUB_ID, "-set", "domain", DOMAIN, "-set", "setup", setup, "-set", "mport", str(mport),
                 "-set", "portfile", str(portfile), "-set", "ssrc", ssrc, "-d", str(seconds * 1000 + 1500),
                 "-m", "1", "-timeout", "30s", "-timeout_error", "-nostdin", "-nd"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(0.5)
        result: dict = {}

        def play():
            try:
                start = datetime(2026, 12, 6, 8, 0, tzinfo=UTC)
                headers, body = client.play(DEV, "51019910111320000051", start, start + timedelta(minutes=10),
                                            speed=speed)
                result["headers"] = headers
                result["data"] = b"".join(body)
            except Exception as exc:            # noqa: BLE001 - said by the assertion below
                result["error"] = exc
        player = threading.Thread(target=play, daemon=True)
        player.start()
        if transport == "tcp-passive":          # the hub listens on the port of its offer: connect there
            deadline = time.monotonic() + 15
            while not (portfile.exists() and portfile.read_text().strip()) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not portfile.exists():
                uas.kill()
                player.join(15)
                raise AssertionError(f"SIPp wrote no offer port ({result}): "
                                     + uas.communicate()[0].decode(errors="replace")[-3000:])
            offered = int(portfile.read_text().strip())
            sender = PsRtpSender(MediaOffer("127.0.0.1", offered, "tcp-passive", ssrc), ffmpeg_args=media,
                                 mux="ffmpeg")
            sender.start()
        if control is not None:
            deadline = time.monotonic() + 15
            while "headers" not in result and "error" not in result and time.monotonic() < deadline:
                time.sleep(0.05)
            assert "headers" in result, result
            result["control"] = control(client, result["headers"]["X-Session"])
        player.join(40)
        out, _ = uas.communicate(timeout=30)
        assert uas.returncode == 0, out.decode(errors="replace")[-3000:]
        assert "error" not in result, result.get("error")
        assert result["headers"]["X-Transport"] == transport
        assert not server.dialogs
        return result, svc.finished[-1]
    finally:
        if sender is not None:
            sender.stop()
        svc.stop()
        server.stop()


def decodable_frames(data: bytes) -> int:
    import io

    import av
    with av.open(io.BytesIO(data)) as c:
        return sum(1 for _ in c.decode(video=0))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("transport,speed", [("tcp-passive", None), ("tcp-active", None), ("tcp-passive", 4)])
def test_sipp_nvr_plays_back_over_tcp_and_ends_with_media_status(site_db, tmp_path, transport, speed):
    """s=Playback with a device not written by us: SIPp answers the INVITE with a TCP SDP
    (a=setup:active when the hub listens, passive when the hub connects), FFmpeg's own PS muxer
    (``-f vob``) feeds the RTP, and SIPp's MediaStatus 121 ends the session: the hub says BYE.
    With ``speed`` (an export's download) the INVITE must be s=Download with a=downloadspeed:4
    (SIPp's scenario refuses the call otherwise)."""
    result, stream = sipp_nvr_playback(site_db, tmp_path, transport,
                                       "uas_download.xml" if speed else "uas_playback.xml", speed=speed)
    assert result["headers"].get("X-Download") == (str(speed) if speed else None)
    assert decodable_frames(result["data"]) >= 20          # ~3 s at 10 fps, decodable
    assert stream.ended_by == "media-status"


@pytest.mark.timeout(120)
def test_sipp_nvr_takes_mansrtsp_pause_speed_and_seek(site_db, tmp_path):
    """Playback control (MANSRTSP in INFO) read by a SIP stack not ours: SIPp's NVR checks the
    Content-Type and each request line and field (PAUSE with PauseTime, PLAY with Scale, PLAY with
    Range: npt=), answering each 200; the hub's session follows (paused, then at 2×)."""
    from datetime import UTC, datetime

    def control(client, session):
        at = datetime(2026, 12, 6, 8, 0, 5, tzinfo=UTC)
        return [client.control(session, "pause"), client.control(session, "play", scale=2),
                client.control(session, "play", at=at)]
    result, stream = sipp_nvr_playback(site_db, tmp_path, "tcp-passive", "uas_playback_control.xml",
                                       control=control, seconds=4)
    assert [(r["paused"], r["scale"]) for r in result["control"]] == [(True, 1.0), (False, 2.0), (False, 2.0)]
    assert [c.split()[0] for c in stream.controls] == ["PAUSE", "PLAY", "PLAY"]
    assert decodable_frames(result["data"]) >= 20
    assert stream.ended_by == "media-status"
