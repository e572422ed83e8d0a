"""What live view is asked for, and how it says no: the two types every api/live module shares.

``CameraSource`` is one stream of one camera with its login, built per request by
api/live/views.py from the cameras table and the site file; the feed (api/live/feed.py)
pulls it and the ONVIF lookup (api/live/onvif.py) asks the camera for its URI.
``LiveError`` is a refusal safe to show to the viewer, raised anywhere in live view and
turned into an HTTP answer by views.py.

They live apart from the modules that use them so that those import one another in one
direction only: views → sessions → feed → onvif, sender; and each of them → here.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from cameras.config import with_credentials
from cameras.onvif_link import OnvifEndpoint
from config.urls import redact_url


class LiveError(Exception):
    """A viewer cannot be served (reason is safe to show: no credentials)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class CameraSource:
    """Where one stream of a camera is and how to log in; ``repr`` never shows the password.
    ``stream`` is the stream ``url`` carries (main or sub); ``url`` is empty for a camera known
    only by its ONVIF address (``onvif_host``), ``stream`` then the profile to ask it for."""
    camera_id: str
    url: str
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    onvif_host: str | None = None
    onvif_port: int = 80
    stream: str = "main"
    transport: str = "auto"          # RTSP lower transport (cameras/rtsp.py)

    @property
    def key(self) -> tuple[str, str]:
        """A feed per (camera, stream)."""
        return self.camera_id, self.stream

    @property
    def onvif_only(self) -> bool:
        return not self.url and self.onvif_host is not None

    def credentialed(self, url: str) -> str:
        """``url`` with this camera's user-info put in: for the demuxer only."""
        return with_credentials(url, self.username, self.password or None)

    @property
    def shown_url(self) -> str:
        if self.onvif_only:
            return f"onvif://{OnvifEndpoint(self.onvif_host, self.onvif_port, '', '').address}"
        return redact_url(self.url)
