"""The camera's audio in its recording (issue 13: "audio kept when the camera sends it"), from
GStreamer's RTSP server (tests/cameras/peers/gst_rtsp.py, not the hub's simulator) sending
H.264 and a 440 Hz sine as AAC (RFC 3640) or as G.711 A-law (PCMA, as GB/T 28181 cameras do;
over RTP/TCP, and over RTP/UDP from a server that allows nothing else),
read by a real camera worker (reader → Fanout → recorder → index and chain in PostgreSQL):

- every segment has an AAC track (A-law transcoded: MP4 cannot hold G.711) as long as its
  video, starting with it, and it is the sine (its loudness and its pitch, decoded by FFmpeg);
- ffprobe (not our reader) sees both tracks; the chain verifies;
- an export of a range keeps the audio, in sync, as long as the range.
"""
from __future__ import annotations

import json
import subprocess
import time
from datetime import timedelta

import av
import numpy as np
import pytest

from cameras.config import CameraAnalytics, CameraSpec
from cameras.recording import export
from cameras.recording.chain import verify
from cameras.worker import CameraWorker
from config.camera_recording import CameraRecording
from config.settings import Settings
from store.db import connect
from tests.cameras.peers import GstPeer
from tests.processes import running

pytestmark = pytest.mark.timeout(180)

SINE_HZ = 440


@pytest.fixture(scope="module")
def peers():
    with GstPeer(audio="aac", path="/aac") as aac, GstPeer(audio="alaw", path="/alaw") as alaw, \
            GstPeer(audio="alaw", path="/udp", protocols="udp") as udp:      # RTP over UDP (the reader falls back)
        yield {"aac": aac, "alaw": alaw, "alaw-udp": udp}


@pytest.fixture(scope="module")
def recorded(peers, db_url, tmp_path_factory):
    var = tmp_path_factory.mktemp("rec-audio")
    mp = pytest.MonkeyPatch()
    mp.setenv("XLHUB_RECORDING_SEGMENT_S", "3")
    specs = [CameraSpec(id=f"cam-audio-{k}", url=p.url(), analytics=CameraAnalytics(stream="main"))
             for k, p in peers.items()]
    specs.append(CameraSpec(id="cam-audio-events", url=peers["aac"].url(), analytics=CameraAnalytics(stream="main"),
                            recording=CameraRecording(mode="events", pre_s=3, post_s=2)))
    worker = CameraWorker(Settings(var_dir=var), cameras=specs, db_url=db_url, evidence_root=var / "evidence",
                          heartbeat_s=1)
    with running(worker):
        yield worker
    mp.undo()


def wait_rows(db_url: str, camera: str, n: int, timeout: float = 40) -> list[dict]:
    deadline = time.monotonic() + timeout
    found: list = []
    while time.monotonic() < deadline:
        with connect(db_url) as conn:
            found = conn.execute("SELECT * FROM recording_segments WHERE camera_id = %s ORDER BY seq",
                                 (camera,)).fetchall()
        if len(found) >= n:
            return found
        time.sleep(0.3)
    raise AssertionError(f"{camera}: {len(found)} segments indexed, wanted {n}")


def probe(path) -> dict:
    """FFmpeg's own reading of the file (not PyAV's demuxer as the hub uses it)."""
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries",
                          "stream=codec_type,codec_name,sample_rate,channels,start_time,duration",
                          "-of", "json", str(path)], check=True, capture_output=True, text=True).stdout
    return {s["codec_type"]: s for s in json.loads(out)["streams"]}


def sound(path) -> tuple[np.ndarray, int, float]:
    """The audio decoded (mono float), its rate, and its first sample's time."""
    with av.open(str(path)) as c:
        s = c.streams.audio[0]
        frames = list(c.decode(s))
    first = float(frames[0].pts * frames[0].time_base)
    data = np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.float64)
    return data, s.sample_rate, first


def assert_sine(data: np.ndarray, rate: int) -> None:
    body = data[rate // 4:-rate // 4]          # without the encoder's ramp at either end
    rms = float(np.sqrt(np.mean(body ** 2)))
    assert rms > 0.1, f"audio RMS {rms:.4f}: the camera's sine (volume 0.5) is not there"
    spectrum = np.abs(np.fft.rfft(body * np.hanning(len(body))))
    peak = float(np.fft.rfftfreq(len(body), 1 / rate)[int(np.argmax(spectrum))])
    assert abs(peak - SINE_HZ) < 10, f"the loudest pitch is {peak:.0f} Hz, the camera sent {SINE_HZ} Hz"


@pytest.mark.parametrize("kind,rate", [("aac", 16000), ("alaw", 8000), ("alaw-udp", 8000)])
def test_segments_keep_the_cameras_audio_in_sync(kind, rate, recorded, db_url):
    camera = f"cam-audio-{kind}"
    found = wait_rows(db_url, camera, 3)
    root = recorded.recorder.root
    for row in found[1:3]:                     # whole segments (the first starts mid-connection)
        path = root / row["path"]
        streams = probe(path)
        assert streams["video"]["codec_name"] == "h264"
        a = streams.get("audio")
        assert a is not None, f"{kind}: the segment has no audio track: {streams}"
        assert a["codec_name"] == "aac" and int(a["sample_rate"]) == rate and a["channels"] == 1
        video_s = float(streams["video"]["duration"])
        assert abs(float(a["duration"]) - video_s) < 0.5, f"audio {a['duration']} s beside video {video_s} s"
        assert abs(float(a["start_time"]) - float(streams["video"]["start_time"])) < 0.5, "audio starts with video"
        data, got_rate, first = sound(path)
        assert got_rate == rate and len(data) / rate > video_s - 0.5
        assert_sine(data, rate)
    with connect(db_url) as conn:
        report = verify(conn, root, camera_id=camera)
    assert report.ok and report.files_checked == report.segments >= 3, report.as_dict()


def test_an_export_keeps_the_audio(recorded, db_url, tmp_path):
    camera = "cam-audio-alaw"
    found = wait_rows(db_url, camera, 4)
    start = found[1]["start_at"] + timedelta(seconds=1)
    end = found[3]["start_at"] + timedelta(seconds=1)
    with connect(db_url) as conn:
        p = export.plan(conn, camera, start, end, max_bytes=10**9)
    out = tmp_path / "export.mp4"
    written = export.write(p, recorded.recorder.root, out)
    assert written.packets > 0
    streams = probe(out)
    a, v = streams.get("audio"), streams["video"]
    assert a is not None and a["codec_name"] == "aac", f"the export lost the audio: {streams}"
    want = (end - start).total_seconds()
    assert abs(float(a["duration"]) - want) < 0.6, f"audio {a['duration']} s for a {want:.1f} s range"
    data, rate, first = sound(out)
    assert abs(first - max(0.0, float(v.get("start_time", 0)))) < 0.5, f"audio starts at {first:.3f} s"
    assert_sine(data, rate)



def test_audio_mp4_cannot_hold_is_dropped_with_the_reason_and_the_video_kept(tmp_path, monkeypatch):
    """G.726 (some GB/T 28181 cameras): no MP4 mapping, no transcode here — the segment says why."""
    from dataclasses import replace
    from fractions import Fraction

    from cameras.evidence import AudioTrack
    from tests.cameras.test_recording_fmp4 import encode, packets_of, record

    recs = packets_of(encode(tmp_path, "h264", 0), extradata=True, uneven=False)
    seg = replace(recs[0].segment, audio="adpcm_g726", audio_track=AudioTrack("adpcm_g726", 8000, 1, Fraction(1, 8000)))
    for r in recs:
        r.segment = seg
    rows = record(recs, tmp_path / "d", direct=True, monkeypatch=monkeypatch)
    assert sum(r.packets for r in rows) == len(recs)
    with av.open(str(tmp_path / "d" / rows[0].path)) as c:
        assert not c.streams.audio and len(c.streams.video) == 1
        assert "adpcm_g726 cannot be stored in MP4" in c.metadata.get("comment", ""), c.metadata


def play_bytes(recorded, db_url, camera: str) -> tuple[bytes, str]:
    from cameras.recording.playback import Play, segments
    found = wait_rows(db_url, camera, 3)
    t = found[1]["start_at"] + timedelta(seconds=0.5)
    with connect(db_url) as conn:
        rows = segments(conn, camera, t, found[-1]["end_at"])
    play = Play.open(recorded.recorder.root, rows, t, end=t + timedelta(seconds=5))
    return b"".join(play.chunks()), play.codec_string


def test_playback_streams_the_audio_with_the_pictures(recorded, db_url, tmp_path):
    data, codecs = play_bytes(recorded, db_url, "cam-audio-aac")
    assert codecs.startswith("avc1.") and codecs.endswith(",mp4a.40.2"), codecs
    out = tmp_path / "play.mp4"
    out.write_bytes(data)
    streams = probe(out)
    a = streams.get("audio")
    assert a is not None and a["codec_name"] == "aac", streams
    samples, rate, first = sound(out)
    assert abs(first - float(streams["video"].get("start_time", 0))) < 0.5
    assert len(samples) / rate > 4.0
    assert_sine(samples, rate)


CHROMIUM = "/usr/bin/chromium"
MSE = """async ([b64, type]) => {
  const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
  if (!MediaSource.isTypeSupported(type)) return {supported: false};
  const video = document.querySelector('video');
  const ms = new MediaSource();
  video.src = URL.createObjectURL(ms);
  await new Promise(r => ms.addEventListener('sourceopen', r, {once: true}));
  const sb = ms.addSourceBuffer(type);
  const err = await new Promise(r => { sb.addEventListener('updateend', () => r(null), {once: true});
                                       sb.addEventListener('error', () => r('error'), {once: true});
                                       sb.appendBuffer(bytes); });
  const b = sb.buffered;
  const ranges = []; for (let i = 0; i < b.length; i++) ranges.push([b.start(i), b.end(i)]);
  video.currentTime = ranges.length ? ranges[0][0] : 0;
  await video.play().catch(e => null);
  await new Promise(r => setTimeout(r, 1500));
  return {supported: true, err, ranges, currentTime: video.currentTime,
          audioBytes: video.webkitAudioDecodedByteCount, videoBytes: video.webkitVideoDecodedByteCount,
          mediaError: video.error && video.error.message};
}"""


def test_chromium_media_source_takes_the_audio_and_decodes_it(recorded, db_url):
    import base64

    from playwright import sync_api
    data, codecs = play_bytes(recorded, db_url, "cam-audio-alaw")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--headless", "--no-sandbox", "--disable-gpu",
                                          "--autoplay-policy=no-user-gesture-required"])
        try:
            page = browser.new_page()
            page.set_content("<video></video>")
            got = page.evaluate(MSE, [base64.b64encode(data).decode(), f'video/mp4; codecs="{codecs}"'])
        finally:
            browser.close()
    assert got["supported"], f"chromium's Media Source refuses {codecs}"
    assert got["err"] is None and got["mediaError"] is None, got
    # a SourceBuffer's buffered range is where every track (video and audio) has media
    assert got["ranges"] and got["ranges"][0][1] - got["ranges"][0][0] > 3, got
    assert got["audioBytes"] > 0 and got["videoBytes"] > 0, f"the audio was not decoded: {got}"


def test_an_events_pre_roll_has_its_sound(recorded, db_url):
    """The ring holds pictures only: the seconds before the event get their sound from the
    recorder's own audio buffer."""
    time.sleep(5)                               # the ring and the audio buffer fill
    at = time.time()
    recorded.pipelines["cam-audio-events"].recording.mark(at)
    row = wait_rows(db_url, "cam-audio-events", 1, timeout=20)[0]
    assert row["start_at"].timestamp() <= at - 2.5, "the pre-roll from the ring"
    path = recorded.recorder.root / row["path"]
    streams = probe(path)
    a = streams.get("audio")
    assert a is not None, streams
    assert float(a["start_time"]) < 0.3, f"the pre-roll's sound starts at {a['start_time']} s, not with the picture"
    end = float(a["duration"]) + float(a["start_time"])
    assert abs(end - float(streams["video"]["duration"])) < 0.5, f"sound to {end} s, pictures to " \
                                                                  f"{streams['video']['duration']} s"
    data, rate, _ = sound(path)
    assert_sine(data, rate)
