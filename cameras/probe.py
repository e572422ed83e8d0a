"""Testing a camera's stream before it is saved (摄像机管理 → 测试连接): open it the way a
camera worker would (cameras/rtsp.py, the one place a camera URL reaches FFmpeg), decode the
first picture and say what was found (codec, resolution) with a snapshot JPEG — or why it
does not play, as a ``StreamProblem`` with its Chinese label (认证失败, 无法连接 …).

Only ``rtsp://`` and ``rtsps://`` URLs without user-info are opened (the API checks them with
the site file's ``url_problem`` first): never http(s), files or FFmpeg's other protocols, so
the test cannot be turned into a request to any other kind of server (SSRF)."""
from __future__ import annotations

import time
from dataclasses import dataclass

import av

from cameras.config import with_credentials
from cameras.evidence import jpeg
from cameras.rtsp import Failure, StreamError, Transport, classify, is_rtsp, open_stream
from config.vocabulary import StreamProblem


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    codec: str | None = None
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    transport: str | None = None        # what worked: tcp or udp
    jpeg: bytes | None = None
    failure: Failure | None = None
    elapsed_s: float = 0.0


def probe(url: str, username: str | None = None, password: str | None = None, *, transport: str = "auto",
          open_timeout_s: float = 6.0, read_timeout_s: float = 5.0, max_packets: int = 600) -> ProbeResult:
    """Open ``url`` and decode its first picture (a keyframe). Never raises for a camera's
    fault: the result says it. ``url`` must be RTSP (see the module docstring)."""
    if not is_rtsp(url):
        raise ValueError("only rtsp:// and rtsps:// streams are tested")
    started = time.monotonic()
    chosen = Transport(transport)
    try:
        container = open_stream(with_credentials(url, username, password), chosen, open_timeout_s, read_timeout_s)
    except StreamError as exc:
        return ProbeResult(False, failure=exc.failure, elapsed_s=time.monotonic() - started)
    try:
        try:
            video = container.streams.video[0]
        except IndexError as exc:
            return ProbeResult(False, failure=classify(exc), elapsed_s=time.monotonic() - started)
        codec = video.codec_context.name
        rate = float(video.average_rate) if video.average_rate else None
        deadline = started + open_timeout_s + read_timeout_s
        for n, packet in enumerate(container.demux(video)):
            if n >= max_packets or time.monotonic() > deadline:
                break
            for frame in packet.decode():
                return ProbeResult(True, codec=codec, width=frame.width, height=frame.height, fps=rate,
                                   transport=chosen.working, jpeg=jpeg(frame, 85),
                                   elapsed_s=time.monotonic() - started)
        return ProbeResult(False, codec=codec, transport=chosen.working,
                           failure=Failure(StreamProblem.stalled, "connected, no picture decoded in time"),
                           elapsed_s=time.monotonic() - started)
    except (av.FFmpegError, OSError) as exc:
        return ProbeResult(False, failure=classify(exc, time.monotonic() - started, read_timeout_s),
                           elapsed_s=time.monotonic() - started)
    finally:
        container.close()
