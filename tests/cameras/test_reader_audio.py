"""The reader and the camera's audio (issue 13): GStreamer's RTSP server (not our simulator)
sends H.264 and AAC; a sink with ``on_audio`` gets the audio packets, on the video's clock; a
sink without it (the ReaderSink of before) reads the same camera as it always did."""
from __future__ import annotations

import threading
import time

import pytest

from cameras.reader import QuietSink, StreamReader
from tests.cameras.peers import GstPeer

pytestmark = pytest.mark.timeout(90)


class VideoSink(QuietSink):
    def __init__(self) -> None:
        self.video: list[float] = []
        self.segment = None

    def on_open(self, segment, open_s):
        self.segment = segment

    def on_packet(self, packet, wall, key, segment, mono):
        self.video.append(wall)



class AudioSink(VideoSink):
    def __init__(self) -> None:
        super().__init__()
        self.audio: list[tuple[float, int, str]] = []

    def on_audio(self, packet, wall, segment):
        assert segment is self.segment, "audio comes with its connection's Segment"
        self.audio.append((wall, packet.size, segment.audio_track.codec))


@pytest.fixture(scope="module")
def peer():
    with GstPeer(audio="aac") as p:
        yield p


def read(url: str, sink, seconds: float = 5.0) -> None:
    reader = StreamReader("cam-audio", url, sink)
    thread = threading.Thread(target=reader.read_once, daemon=True)
    thread.start()
    time.sleep(seconds)
    reader.stop()
    thread.join(10)


def test_a_sink_with_on_audio_gets_the_cameras_audio_on_the_videos_clock(peer):
    sink = AudioSink()
    read(peer.url(), sink)
    track = sink.segment.audio_track
    assert track is not None and (track.codec, track.sample_rate, track.channels) == ("aac", 16000, 1)
    assert track.extradata, "the AudioSpecificConfig from the SDP"
    assert len(sink.video) > 30
    assert len(sink.audio) > 40, f"{len(sink.audio)} audio packets in 5 s of 16 kHz AAC (15.6 a second)"
    assert all(size > 0 and codec == "aac" for _, size, codec in sink.audio)
    walls = [w for w, _, _ in sink.audio]
    assert all(b >= a - 0.05 for a, b in zip(walls, walls[1:])), "audio wall times run forward"
    # sent together, so their wall times overlap: the same clock mapping
    assert abs(walls[0] - sink.video[0]) < 0.5 and abs(walls[-1] - sink.video[-1]) < 0.5, \
        (walls[0], sink.video[0], walls[-1], sink.video[-1])


def test_a_sink_without_on_audio_reads_the_camera_as_before(peer):
    sink = VideoSink()
    read(peer.url(), sink)
    assert len(sink.video) > 30
    # the audio is not even set up (allowed_media_types=video): no RTP for it, so no stream
    assert sink.segment.audio is None and sink.segment.audio_track is None


class NotNowSink(AudioSink):
    def wants_audio(self) -> bool:      # a camera not recorded: its pipeline has no recorder
        return False


def test_audio_nobody_keeps_is_not_set_up(peer):
    sink = NotNowSink()
    read(peer.url(), sink, seconds=3.0)
    assert len(sink.video) > 15
    assert sink.segment.audio is None and sink.audio == []
