"""What a supervisor's flag says when its evidence is not whole (issue 12, items 2 and 8):
a clip that cannot be made is named, with its reason, in the flag's answer and its event
(and so in the case); a camera that never sent a picture is told apart from a moment
older than the ring; a camera's sound, which clips do not keep, is said to be missing.

Real streams, not the hub's simulator: FFmpeg encodes them (H.263 — which old cameras
send and MP4 cannot hold —, H.264 with AAC sound in MPEG-TS), the hub's StreamReader reads
them into a real CameraPipeline whose EvidenceStore writes real files."""
from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import av
import pytest

from bus.commands import FlagCommand
from cameras.config import CameraAnalytics, CameraSpec
from cameras.evidence import EvidenceStore
from cameras.reader import StreamReader
from cameras.pipeline import CameraPipeline, CommandError, OutEvent, flag_answer

FPS = 10
ANALYTICS = {"clip": {"before_s": 2, "after_s": 2, "flag_after_s": 1, "ring_s": 30}}


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-v", "error", "-y", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def streams(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("flagnotes")
    video = ["-f", "lavfi", "-i", f"testsrc2=size=320x180:rate={FPS}"]
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size=352x288:rate={FPS}", "-t", "6", "-c:v", "h263", "-g", str(FPS),
           str(d / "h263.3gp"))
    ffmpeg(*video, "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=8000", "-t", "6", "-c:v", "libx264",
           "-bf", "0", "-g", str(2 * FPS), "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "32k", str(d / "sound.ts"))
    ffmpeg(*video, "-t", "6", "-c:v", "libx264", "-bf", "0", "-g", str(2 * FPS), "-pix_fmt", "yuv420p",
           str(d / "silent.ts"))
    return {p.stem: p for p in d.iterdir()}


class Camera:
    """A camera pipeline that has read ``path`` (all of it) into its ring."""

    def __init__(self, tmp_path: Path, path: Path | None) -> None:
        self.events: list[OutEvent] = []
        self.store = EvidenceStore(tmp_path / "evidence")
        self.jobs = ThreadPoolExecutor(1)
        # The file is read faster than real time: its frames are stamped up to 6 s ahead of
        # now, so the pipeline's clock is set where a live camera's would be by then.
        self.pipeline = CameraPipeline(CameraSpec(id="cam-notes", url=str(path or ""),
                                                  analytics=CameraAnalytics.model_validate(ANALYTICS)),
                                       emit=self.events.append, store=self.store, jobs=self.jobs,
                                       wall=lambda: time.time() + 10)
        if path is not None:
            StreamReader("cam-notes", str(path), self.pipeline).read_once()
        self.records = self.pipeline.ring.records()

    def flag(self, at: float) -> OutEvent:
        return self.pipeline.flag(FlagCommand(frame_ts=datetime.fromtimestamp(at, UTC), category="治安防控",
                                              by="ds-supervisor"))

    def close(self) -> None:
        self.jobs.shutdown()


@pytest.fixture
def camera(tmp_path):
    made: list[Camera] = []

    def make(path: Path | None) -> Camera:
        made.append(Camera(tmp_path, path))
        return made[-1]

    yield make
    for c in made:
        c.close()


def test_a_clip_that_cannot_be_made_is_said_in_the_answer_and_the_event(camera, streams):
    cam = camera(streams["h263"])
    assert cam.records and cam.records[0].segment.codec == "h263"
    event = cam.flag(cam.records[0].wall + 2.5)
    # The snapshot is there; the clip is not, and everyone who reads the flag is told why.
    assert [e.kind for e in event.evidence] == ["snapshot"]
    missing = event.detail["clip_missing"]
    assert missing["reason"] == "codec"
    assert missing["text"].startswith("片段无法生成") and "(clip could not be made: MP4 cannot hold" in missing["text"]
    assert "h263" in missing["text"]
    assert cam.events == [event] and event.body()["detail"]["clip_missing"] == missing
    answer = flag_answer(event)
    assert answer["clip_missing"] == missing and [e["kind"] for e in answer["evidence"]] == ["snapshot"]
    assert not list((cam.store.root / "cam-notes" / ".partial").glob("*")), "no half-written clip left"
    assert list(cam.store.root.glob("cam-notes/*/*.jpg")) and not list(cam.store.root.glob("cam-notes/*/*.mp4"))


def test_a_camera_that_never_sent_a_picture_says_so(camera, streams):
    never = camera(None)
    with pytest.raises(CommandError) as err:
        never.flag(time.time() - 1)
    assert str(err.value).startswith("该摄像机尚无画面") and "(the camera has sent no picture yet)" in str(err.value)
    assert "keeps the last" not in str(err.value)
    # A camera that did send pictures, asked for a moment older than its ring: that message.
    seen = camera(streams["silent"])
    with pytest.raises(CommandError) as err:
        seen.flag(seen.records[0].wall - 60)
    assert str(err.value).startswith("该时刻已无视频") and "(no video at that time: the hub keeps the last 30 s)" \
        in str(err.value)


def test_a_camera_that_sends_sound_is_told_its_clip_has_none(camera, streams):
    cam = camera(streams["sound"])
    assert cam.records[0].segment.audio == "aac"
    event = cam.flag(cam.records[0].wall + 2.5)
    assert [e.kind for e in event.evidence] == ["snapshot", "clip"] and "clip_missing" not in event.detail
    audio = event.detail["clip_audio"]
    assert audio["kept"] is False and audio["codec"] == "aac"
    assert audio["text"].startswith("未保留音频") and "(audio not kept" in audio["text"]
    assert flag_answer(event)["clip_audio"] == audio
    path = next(cam.store.root.glob("cam-notes/*/*.mp4"))
    with av.open(str(path)) as c:
        assert len(c.streams.video) == 1 and not c.streams.audio
        assert "audio not kept (aac)" in c.metadata.get("comment", "")
        assert len(list(c.decode(video=0))) >= 2 * FPS
    # A camera without sound: nothing to say.
    quiet = camera(streams["silent"])
    assert quiet.records[0].segment.audio is None
    event = quiet.flag(quiet.records[0].wall + 2.5)
    assert [e.kind for e in event.evidence] == ["snapshot", "clip"]
    assert "clip_audio" not in event.detail and "clip_audio" not in flag_answer(event)
