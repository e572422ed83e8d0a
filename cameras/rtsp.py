"""Opening a camera's stream, and saying why it could not be opened.

The one place the hub hands a camera URL to FFmpeg (PyAV): the camera workers' readers
(cameras/reader.py) and the live relay (api/live/feed.py) both open through
``open_stream``, so both honour the camera's transport setting and both describe a
failure the same way.

Transport (the site file's ``transport`` of a camera, config/vocabulary.RTSP_TRANSPORTS):
- ``tcp``: RTP interleaved on the RTSP connection — through NAT and firewalls, no loss;
- ``udp``: RTP on UDP ports — some cameras and servers offer nothing else;
- ``auto`` (default): TCP first; when the server answers ``461 Unsupported Transport``
  (FFmpeg then says "Protocol not supported"), UDP at once, in the same attempt. What
  worked is remembered (``Transport.working``) and tried first on the next connection.

``classify`` turns FFmpeg's exception into a ``Failure``: a ``StreamProblem`` code with
its Chinese label (config/vocabulary.py) for the wall and the API, and a short English
detail, redacted, for the log and integrators. FFmpeg says "Invalid data found when
processing input" both for a server that never answers and for one that answers
something other than RTSP: the time the attempt took tells them apart.
"""
from __future__ import annotations

import errno
import time
from dataclasses import dataclass

import av

from config.urls import redact_text
from config.vocabulary import RTSP_TRANSPORTS, StreamProblem

RTSP_SCHEMES = ("rtsp://", "rtsps://")


def is_rtsp(url: str) -> bool:
    return url.lower().startswith(RTSP_SCHEMES)


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a stream is not playing: ``problem`` for people (``label``), ``detail`` for the log."""
    problem: StreamProblem
    detail: str

    @property
    def label(self) -> str:
        return self.problem.label

    def __str__(self) -> str:
        return f"{self.problem.value}: {self.detail}"


STREAM_ENDED = Failure(StreamProblem.stream_ended, "the camera ended the stream")
NO_VIDEO = Failure(StreamProblem.codec_unsupported, "the stream has no video track")


class Transport:
    """One camera's transport setting and what worked last (see the module docstring)."""

    def __init__(self, setting: str = "auto") -> None:
        if setting not in RTSP_TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(RTSP_TRANSPORTS)}, not {setting!r}")
        self.setting = setting
        self.working: str | None = None

    def order(self) -> tuple[str, ...]:
        if self.setting != "auto":
            return (self.setting,)
        return ("udp", "tcp") if self.working == "udp" else ("tcp", "udp")

    def __repr__(self) -> str:
        return f"Transport({self.setting!r}, working={self.working!r})"


def input_options(url: str, read_timeout_s: float, transport: str = "tcp", audio: bool = False) -> dict[str, str]:
    """FFmpeg's options for a camera's stream. Without ``audio`` only the video is set up: a
    camera's audio RTP that nobody keeps costs the reader about half again its CPU (measured:
    GStreamer's camera with AAC, 4.1 ms/s read video-only against 6.5 ms/s with the audio set up
    and discarded)."""
    if not is_rtsp(url):
        return {}
    options = {
        "rtsp_transport": transport,
        "timeout": str(int(read_timeout_s * 1_000_000)),  # socket I/O timeout, µs
        # Probe little: the SDP already names the codec, and a long probe is time to first
        # frame (and packets buffered with stale arrival times).
        "analyzeduration": "500000",
        "probesize": "131072",
        "fflags": "nobuffer",
    }
    if not audio:
        options["allowed_media_types"] = "video"
    return options


def _unsupported_transport(exc: BaseException) -> bool:
    return getattr(exc, "errno", None) == errno.EPROTONOSUPPORT


def open_stream(url: str, transport: Transport, open_timeout_s: float, read_timeout_s: float, *,
                audio: bool = False):
    """``av.open`` with the camera's transport (and its audio, when ``audio``: the recorder keeps
    it); raises ``StreamError`` with a ``Failure``."""
    started = time.monotonic()
    order = transport.order() if is_rtsp(url) else ("tcp",)
    refused: list[str] = []
    for i, lower in enumerate(order):
        try:
            container = av.open(url, options=input_options(url, read_timeout_s, lower, audio),
                                timeout=(open_timeout_s, read_timeout_s))
        except (av.FFmpegError, OSError) as exc:
            if _unsupported_transport(exc):
                refused.append(lower)
                if i + 1 < len(order):
                    continue
            failure = classify(exc, time.monotonic() - started, read_timeout_s, opened=False)
            if refused and failure.problem is StreamProblem.transport_unsupported:
                failure = Failure(failure.problem, _refused_text(refused, transport.setting))
            elif refused:
                failure = Failure(failure.problem, f"{failure.detail} (over {lower}; the server refused "
                                                   f"{' and '.join(r.upper() for r in refused)})")
            raise StreamError(failure) from None
        if is_rtsp(url):
            transport.working = lower
        return container
    raise AssertionError("unreachable")


def _refused_text(refused: list[str], setting: str) -> str:
    names = " and ".join(r.upper() for r in refused)
    text = f"461 Unsupported Transport: the server refuses RTP over {names}"
    if setting != "auto":
        text += " (camera transport is " + setting + "; try auto)"
    return text


class StreamError(Exception):
    def __init__(self, failure: Failure) -> None:
        super().__init__(str(failure))
        self.failure = failure


_UNREACHABLE = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL,
                errno.ECONNRESET, errno.EIO}


def _text(exc: BaseException) -> str:
    text = redact_text(str(exc)).strip()
    # "[Errno 111] Connection refused: 'rtsp://***@host/x'" → keep the reason, drop the URL.
    if ": '" in text:
        text = text.split(": '", 1)[0]
    if text.startswith("[Errno"):
        text = text.split("] ", 1)[-1]
    return text[:200] or type(exc).__name__


def classify(exc: BaseException, elapsed_s: float = 0.0, read_timeout_s: float = 0.0, *,
             opened: bool = True) -> Failure:
    """The problem an exception from opening (``opened=False``) or reading a stream shows."""
    if isinstance(exc, StreamError):
        return exc.failure
    detail = _text(exc)
    declared = getattr(exc, "stream_problem", None)      # an exception of the hub's that knows
    if declared is not None:
        return Failure(declared, detail)
    if isinstance(exc, (av.error.HTTPUnauthorizedError, av.error.HTTPForbiddenError)):
        return Failure(StreamProblem.auth_failed, detail)
    if isinstance(exc, av.error.HTTPNotFoundError) or getattr(exc, "errno", None) == errno.ENOENT:
        return Failure(StreamProblem.not_found, detail)
    if isinstance(exc, av.error.ExitError) or isinstance(exc, TimeoutError) \
            or getattr(exc, "errno", None) == errno.ETIMEDOUT:
        return Failure(StreamProblem.no_response, f"no data for {read_timeout_s:g} s" if read_timeout_s else detail)
    if _unsupported_transport(exc):
        return Failure(StreamProblem.transport_unsupported, "461 Unsupported Transport")
    if isinstance(exc, (av.error.DecoderNotFoundError, av.error.PatchWelcomeError)):
        return Failure(StreamProblem.codec_unsupported, detail)
    if isinstance(exc, IndexError):         # container.streams.video[0] of a stream without video
        return NO_VIDEO
    if isinstance(exc, av.error.InvalidDataError):
        if not opened and read_timeout_s and elapsed_s >= 0.8 * read_timeout_s:
            return Failure(StreamProblem.no_response, f"connected, no RTSP answer in {read_timeout_s:g} s")
        if not opened:
            return Failure(StreamProblem.not_rtsp, "the answer is not RTSP")
        return Failure(StreamProblem.other, detail)
    if isinstance(exc, (ConnectionError, OSError)) and getattr(exc, "errno", None) in _UNREACHABLE:
        return Failure(StreamProblem.unreachable, detail)
    if isinstance(exc, av.error.HTTPClientError | av.error.HTTPServerError):
        return Failure(StreamProblem.other, detail)
    return Failure(StreamProblem.other, f"{type(exc).__name__}: {detail}"[:200])
