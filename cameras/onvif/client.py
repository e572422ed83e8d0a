"""A small async face over onvif-zeep-async's ONVIFCamera for the camera workers.

What callers get: device information, media profiles, main/sub stream URIs and the snapshot
URI (always without credentials: the hub adds them from its credentials reference), the
camera's clock skew, and one error type, :class:`OnvifError`, whose ``reason`` says what went
wrong (unreachable, auth, bad reply, not supported, rejected). Nothing zeep or aiohttp raises
reaches a caller, and no message carries a password.

Every request has a timeout (the library's own are 30/90 s, far too long for a hub watching
hundreds of cameras) and transient failures (the camera did not answer) are retried with
backoff; the other failures are final, since asking again cannot fix a wrong password.
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import aiohttp
import zeep.exceptions
from lxml import etree
from onvif import ONVIFCamera
from onvif import SERVICES
from onvif import ONVIFError as LibraryError
from onvif.exceptions import ONVIFAuthError, ONVIFTimeoutError
from onvif.settings import DEFAULT_SETTINGS as _ZEEP_SETTINGS
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

import xmlsafe
from config.urls import redact_text, redact_url

logger = logging.getLogger(__name__)

# onvif-zeep-async hands every zeep client, WSDL load and event reply this one Settings
# object, which allows DTDs and external fetches and turns libxml2's limits off: the hub's XML
# policy (xmlsafe) is set on it once, here, where every camera connection is made.
xmlsafe.harden_zeep(_ZEEP_SETTINGS)

T = TypeVar("T")

# Reasons an OnvifError can carry. Strings, not an enum, so they read well in logs and JSON.
UNREACHABLE = "unreachable"      # no answer: refused, reset, timed out, DNS, 502/503/504
AUTH = "auth"                    # the camera refused our credentials
BAD_REPLY = "bad reply"          # the camera answered something that is not the ONVIF we asked for
NOT_SUPPORTED = "not supported"  # the camera has no such service or operation
REJECTED = "rejected"            # a SOAP fault about the request itself (bad token, bad argument…)
REASONS = (UNREACHABLE, AUTH, BAD_REPLY, NOT_SUPPORTED, REJECTED)

_AUTH_FAULT_CODES = {"notauthorized", "failedauthentication", "invalidsecurity",
                     "invalidsecuritytoken", "failedcheck", "securitytokenunavailable"}
_AUTH_FAULT_TEXT = re.compile(r"not\s*authori[sz]ed|unauthori[sz]ed|authenticat|authori[sz]ation fail|"
                              r"access denied|forbidden|invalid (user|password|credential)", re.I)
_UNSUPPORTED_FAULT_CODES = {"actionnotsupported", "nosuchservice", "notsupported",
                            "operationprohibited", "notimplemented", "noptznode", "noptzprofile"}
_UNSUPPORTED_FAULT_TEXT = re.compile(r"not\s*supported|unsupported|not\s*implemented|unknown action|"
                                     r"no such (service|operation)|action.*not.*(found|support)", re.I)
_CREDENTIAL_QUERY_KEYS = {"user", "username", "usr", "login", "password", "passwd", "pwd", "pass", "psw",
                          "auth", "token"}

_MAX_DETAIL = 240


class OnvifError(Exception):
    """A failed ONVIF exchange. ``reason`` is one of :data:`REASONS`; the message names the
    camera (host:port) and the operation, never a credential.

    ``OnvifError("auth")`` alone is allowed (reason only); ``transient`` says whether asking
    again later may succeed (only for ``unreachable``)."""

    def __init__(self, reason: str, detail: str = "", *, camera: str | None = None,
                 operation: str | None = None) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown OnvifError reason {reason!r}")
        self.reason = reason
        self.detail = detail
        self.camera = camera
        self.operation = operation
        where = " ".join(p for p in (camera, operation) if p)
        text = reason + (f" ({where})" if where else "") + (f": {detail}" if detail else "")
        super().__init__(text)

    @property
    def transient(self) -> bool:
        return self.reason == UNREACHABLE


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently a transient failure is retried: ``attempts`` tries in all,
    waiting ``waits[i]`` seconds before try i+2 (the last wait repeats if there are more tries)."""

    attempts: int = 3
    waits: tuple[float, ...] = (1.0, 5.0)

    def wait_before(self, attempt_number: int) -> float:
        if not self.waits:
            return 0.0
        return self.waits[min(attempt_number - 1, len(self.waits) - 1)]


NO_RETRY = RetryPolicy(attempts=1, waits=())


@dataclass(frozen=True, slots=True)
class DeviceInformation:
    manufacturer: str
    model: str
    firmware_version: str
    serial_number: str
    hardware_id: str


@dataclass(frozen=True, slots=True)
class MediaProfile:
    token: str
    name: str
    encoding: str | None            # H264, H265, JPEG… (None when the profile has no encoder)
    width: int | None
    height: int | None
    fps: float | None
    bitrate_kbps: int | None
    video_source_token: str | None
    ptz_configuration_token: str | None   # None: this profile cannot steer PTZ
    ptz_node_token: str | None = None

    @property
    def pixels(self) -> int:
        return (self.width or 0) * (self.height or 0)


@dataclass(frozen=True, slots=True)
class StreamInfo:
    profile_token: str
    uri: str                        # no user-info: the hub adds the camera's credentials itself
    width: int | None
    height: int | None
    encoding: str | None


@dataclass(frozen=True, slots=True)
class StreamUris:
    main: StreamInfo
    sub: StreamInfo | None          # None on a camera with a single video profile


@dataclass(frozen=True, slots=True)
class ClockSkew:
    camera_time: datetime           # what the camera said, as UTC
    hub_time: datetime              # our UTC at the middle of the request
    skew_seconds: float             # camera minus hub: positive means the camera is ahead
    round_trip_seconds: float
    threshold_seconds: float
    from_local_time: bool           # the camera gave no UTC time; derived from local time + TZ

    @property
    def skewed(self) -> bool:
        """True when the camera clock is further off than the threshold (flag it; event
        times from this camera need the receive time beside them)."""
        return abs(self.skew_seconds) > self.threshold_seconds


def strip_credentials(url: str) -> str:
    """The URL without user-info and without credential-looking query parameters
    (``rtsp://u:p@h/x?user=u&password=p&channel=1`` → ``rtsp://h/x?channel=1``)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return redact_text(url)
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host + (f":{port}" if port else "")
    # Filter the raw parameters rather than re-encode them: cameras are picky about their
    # own query syntax (``?Profile_1`` must not become ``?Profile_1=``).
    query = "&".join(part for part in parts.query.split("&")
                     if part and unquote(part.split("=", 1)[0]).lower() not in _CREDENTIAL_QUERY_KEYS)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _local_name(value: Any) -> str:
    text = getattr(value, "localname", None) or str(value or "")
    return text.rsplit("}", 1)[-1].rsplit(":", 1)[-1].lower()


def _fault_reason(fault: zeep.exceptions.Fault) -> str:
    codes = {_local_name(c) for c in (fault.subcodes or [])}
    codes.add(_local_name(fault.code))
    text = str(fault.message or "")
    if codes & _AUTH_FAULT_CODES or _AUTH_FAULT_TEXT.search(text):
        return AUTH
    if codes & _UNSUPPORTED_FAULT_CODES or _UNSUPPORTED_FAULT_TEXT.search(text):
        return NOT_SUPPORTED
    return REJECTED


def _transport_reason(status: int) -> str:
    if status in (401, 403):
        return AUTH
    if status in (404, 405, 501):
        return NOT_SUPPORTED
    if status in (408, 429, 502, 503, 504):
        return UNREACHABLE
    return BAD_REPLY


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 8:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def classify(exc: BaseException) -> tuple[str, str]:
    """(reason, short description) for any exception the ONVIF stack can raise.

    The library wraps some errors in its own ONVIFError and lets others through raw, so the
    whole cause chain is searched for the first exception that says something definite."""
    for err in _causes(exc):
        if isinstance(err, OnvifError):
            return err.reason, err.detail
        if isinstance(err, zeep.exceptions.Fault):
            codes = ",".join(_local_name(c) for c in (err.subcodes or []) if c is not None)
            return _fault_reason(err), f"SOAP fault {err.message or ''}".strip() + (f" [{codes}]" if codes else "")
        if isinstance(err, zeep.exceptions.TransportError):
            if err.status_code == 200:
                return BAD_REPLY, "reply is not XML"
            return _transport_reason(err.status_code), f"HTTP {err.status_code}"
        if isinstance(err, (zeep.exceptions.DTDForbidden, zeep.exceptions.EntitiesForbidden,
                            zeep.exceptions.ExternalReferenceForbidden)):
            return BAD_REPLY, f"reply refused: {type(err).__name__} (DTDs, entities and external references)"
        if isinstance(err, (zeep.exceptions.XMLSyntaxError, zeep.exceptions.XMLParseError,
                            etree.XMLSyntaxError, zeep.exceptions.ValidationError,
                            zeep.exceptions.UnexpectedElementError, UnicodeError)):
            return BAD_REPLY, f"malformed reply ({type(err).__name__})"
        if isinstance(err, ONVIFAuthError):
            return AUTH, "authentication failed"
        if isinstance(err, (TimeoutError, ONVIFTimeoutError, aiohttp.ServerTimeoutError)):
            return UNREACHABLE, "timed out"
        if isinstance(err, aiohttp.ClientResponseError):
            return _transport_reason(err.status), f"HTTP {err.status}"
        if isinstance(err, (aiohttp.ClientPayloadError, aiohttp.ContentTypeError)):
            return BAD_REPLY, f"malformed reply ({type(err).__name__})"
        if isinstance(err, (aiohttp.ClientConnectionError, ConnectionError, OSError)):
            return UNREACHABLE, f"no connection ({type(err).__name__})"
    if isinstance(exc, LibraryError) and "support service" in str(exc):
        return NOT_SUPPORTED, "the camera does not offer this service"
    return BAD_REPLY, f"unexpected {type(exc).__name__}"


class OnvifCamera:
    """One ONVIF camera. Use as ``async with OnvifCamera(host, port, user, password) as cam``
    or call :meth:`connect` / :meth:`close` yourself.

    ``timeout`` bounds every single request (seconds); ``retry`` says how transient failures
    are retried; ``adjust_time`` lets WS-Security timestamps follow the camera's clock, so a
    camera whose clock is off still accepts our credentials (the skew is still reported by
    :meth:`clock_skew`)."""

    def __init__(self, host: str, port: int = 80, username: str | None = None, password: str | None = None,
                 *, timeout: float = 10.0, retry: RetryPolicy = RetryPolicy(), adjust_time: bool = True,
                 camera_id: str | None = None) -> None:
        self.host = host
        self.port = int(port)
        self.timeout = timeout
        self.retry = retry
        self.camera_id = camera_id or f"{host}:{port}"
        self._username = username
        self._password = password
        self._adjust_time = adjust_time
        self._device: ONVIFCamera | None = None
        self._device_info: DeviceInformation | None = None
        self._profiles: list[MediaProfile] | None = None

    # ------------------------------------------------------------------ plumbing
    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return redact_url(f"{host}:{self.port}")

    @property
    def device(self) -> ONVIFCamera:
        """The underlying onvif-zeep-async device (for the PTZ and event helpers)."""
        if self._device is None:
            raise RuntimeError("OnvifCamera is not connected: call connect() first")
        return self._device

    @property
    def connected(self) -> bool:
        return self._device is not None

    def _scrub(self, text: str) -> str:
        text = redact_text(text)
        if self._password and len(self._password) >= 3:
            text = text.replace(self._password, "***")
        return text[:_MAX_DETAIL]

    def error(self, exc: BaseException, operation: str) -> OnvifError:
        """The OnvifError a caller sees for ``exc`` raised while doing ``operation``."""
        if isinstance(exc, OnvifError):
            return exc
        reason, detail = classify(exc)
        logger.debug("onvif %s %s failed: %s (%s)", self.address, operation, reason,
                     self._scrub(f"{type(exc).__name__}: {exc}"))
        return OnvifError(reason, self._scrub(detail), camera=self.address, operation=operation)

    async def with_retry(self, attempt: Callable[[], Awaitable[T]], retry: RetryPolicy | None = None) -> T:
        """Run ``attempt`` (which raises OnvifError) again after a wait while it fails transiently."""
        policy = retry or self.retry

        def log_retry(state: Any) -> None:
            err = state.outcome.exception()
            logger.info("onvif %s: %s, retrying in %.1f s (attempt %d of %d)", self.address, err,
                        state.next_action.sleep, state.attempt_number + 1, policy.attempts)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(max(1, policy.attempts)),
            wait=lambda state: policy.wait_before(state.attempt_number),
            retry=retry_if_exception(lambda e: isinstance(e, OnvifError) and e.transient),
            before_sleep=log_retry,
            reraise=True,
        )
        return await retrying(attempt)

    @contextmanager
    def reading(self, operation: str) -> Iterator[None]:
        """Turn a reply that lacks what ONVIF promises (missing fields, wrong types) into
        OnvifError("bad reply") instead of an AttributeError deep in a caller."""
        try:
            yield
        except OnvifError:
            raise
        except (AttributeError, TypeError, ValueError, KeyError, IndexError) as exc:
            kind = type(exc).__name__
        else:
            return
        raise OnvifError(BAD_REPLY, f"reply lacks expected fields ({kind})", camera=self.address,
                         operation=operation)

    async def call(self, service: str, operation: str, params: Any = None, *, port_type: str | None = None,
                   timeout: float | None = None, authless: bool = False, retry: RetryPolicy | None = None) -> Any:
        """Call one ONVIF operation (``await cam.call("media", "GetProfiles")``) with the timeout,
        the retries and the error mapping of this class. ``port_type`` picks a per-subscription
        endpoint (``"PullPointSubscription"``) registered in ``device.xaddrs``."""
        limit = timeout or self.timeout

        async def attempt() -> Any:
            device = self.device
            try:
                # Local work only (WSDL parsing, cached): not under the network timeout.
                svc = await device.create_onvif_service(service, port_type=port_type)
            except Exception as exc:  # noqa: BLE001 - every failure is mapped to an OnvifError
                error = self.error(exc, f"{service}.{operation}")
            else:
                method = getattr(svc, ("authless_" if authless else "") + operation)
                try:
                    return await asyncio.wait_for(method(params), limit)
                except Exception as exc:  # noqa: BLE001
                    error = self.error(exc, operation)
            # Raised outside the except blocks so the zeep/aiohttp exception is not even kept
            # as __context__: callers, loggers and tracebacks see the OnvifError alone.
            raise error

        return await self.with_retry(attempt, retry)

    def has_service(self, service: str) -> bool:
        """Whether the camera announced ``service`` (ptz, events, imaging…) at connect."""
        spec = SERVICES.get(service)
        return bool(spec) and spec["ns"] in self.device.xaddrs

    # ------------------------------------------------------------------ lifecycle
    async def connect(self) -> DeviceInformation:
        """Find the camera's services and check our credentials (GetDeviceInformation needs
        them, unlike the service discovery calls many cameras answer to anyone)."""
        if self._device is None:
            async def attempt() -> ONVIFCamera:
                # no_cache: the WSDLs are local files, and zeep's default cache is one SQLite file
                # shared by every worker process on the machine.
                device = ONVIFCamera(self.host, self.port, self._username, self._password,
                                     adjust_time=self._adjust_time, no_cache=True)
                try:
                    await asyncio.wait_for(device.update_xaddrs(), self.timeout)
                    return device
                except Exception as exc:  # noqa: BLE001 - mapped to an OnvifError below
                    error = self.error(exc, "connect")
                except BaseException:
                    await _close_quietly(device)
                    raise
                await _close_quietly(device)
                raise error

            self._device = await self.with_retry(attempt)
        try:
            return await self.device_information(refresh=True)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        device, self._device = self._device, None
        self._profiles = None
        if device is not None:
            await _close_quietly(device)

    async def __aenter__(self) -> OnvifCamera:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ device
    async def device_information(self, refresh: bool = False) -> DeviceInformation:
        if self._device_info is None or refresh:
            reply = await self.call("devicemgmt", "GetDeviceInformation")
            with self.reading("GetDeviceInformation"):
                self._device_info = DeviceInformation(
                    manufacturer=_text(reply.Manufacturer), model=_text(reply.Model),
                    firmware_version=_text(reply.FirmwareVersion), serial_number=_text(reply.SerialNumber),
                    hardware_id=_text(getattr(reply, "HardwareId", "")))
        return self._device_info

    async def clock_skew(self, threshold_seconds: float = 5.0) -> ClockSkew:
        """How far the camera's clock is from ours. Asked without credentials first (ONVIF
        lets anyone read the clock, and a camera whose clock is far off may reject our
        WS-Security timestamps), with credentials if the camera insists."""
        started_wall, started = time.time(), time.monotonic()
        try:
            reply = await self.call("devicemgmt", "GetSystemDateAndTime", authless=True)
        except OnvifError as err:
            if err.reason not in (AUTH, REJECTED):
                raise
            started_wall, started = time.time(), time.monotonic()
            reply = await self.call("devicemgmt", "GetSystemDateAndTime")
        round_trip = time.monotonic() - started
        hub_time = datetime.fromtimestamp(started_wall + round_trip / 2, UTC)
        with self.reading("GetSystemDateAndTime"):
            camera_time, from_local = _camera_utc(reply)
        skew = (camera_time - hub_time).total_seconds()
        result = ClockSkew(camera_time, hub_time, skew, round_trip, threshold_seconds, from_local)
        if result.skewed:
            logger.warning("onvif %s: camera clock is %+.0f s off (threshold %.0f s)", self.address, skew,
                           threshold_seconds)
        return result

    async def clock_skew_seconds(self) -> float:
        """Camera clock minus hub clock, in seconds (positive: the camera is ahead)."""
        return (await self.clock_skew()).skew_seconds

    # ------------------------------------------------------------------ media
    async def profiles(self, refresh: bool = False) -> list[MediaProfile]:
        if self._profiles is None or refresh:
            reply = await self.call("media", "GetProfiles")
            with self.reading("GetProfiles"):
                self._profiles = [_profile(p) for p in (reply or [])]
        return list(self._profiles)

    async def stream_uri(self, profile_token: str, protocol: str = "RTSP") -> str:
        """The RTP-over-RTSP URI of one profile, without credentials."""
        params = {"StreamSetup": {"Stream": "RTP-Unicast", "Transport": {"Protocol": protocol}},
                  "ProfileToken": profile_token}
        reply = await self.call("media", "GetStreamUri", params)
        with self.reading("GetStreamUri"):
            uri = _text(reply.Uri)
        return self._clean_uri(uri, "GetStreamUri")

    async def stream_uris(self) -> StreamUris:
        """Main stream (the largest video profile) and sub stream (the smallest other one: the
        cheapest to decode for health and tamper watching)."""
        video = [p for p in await self.profiles() if p.encoding or p.width]
        if not video:
            video = await self.profiles()
        if not video:
            raise OnvifError(NOT_SUPPORTED, "the camera has no media profile", camera=self.address,
                             operation="GetProfiles")
        ordered = sorted(video, key=lambda p: p.pixels, reverse=True)
        main_profile = ordered[0]
        others = [p for p in ordered[1:] if p.token != main_profile.token]
        sub_profile = min(others, key=lambda p: p.pixels) if others else None
        main = StreamInfo(main_profile.token, await self.stream_uri(main_profile.token), main_profile.width,
                          main_profile.height, main_profile.encoding)
        sub = None
        if sub_profile is not None:
            sub = StreamInfo(sub_profile.token, await self.stream_uri(sub_profile.token), sub_profile.width,
                             sub_profile.height, sub_profile.encoding)
        return StreamUris(main, sub)

    async def snapshot_uri(self, profile_token: str | None = None) -> str:
        """The HTTP URI of a JPEG snapshot (of the main profile unless told), without credentials."""
        if profile_token is None:
            profile_token = (await self.main_profile()).token
        reply = await self.call("media", "GetSnapshotUri", {"ProfileToken": profile_token})
        with self.reading("GetSnapshotUri"):
            uri = _text(reply.Uri)
        if not uri:
            raise OnvifError(NOT_SUPPORTED, "the camera gives no snapshot URI", camera=self.address,
                             operation="GetSnapshotUri")
        return self._clean_uri(uri, "GetSnapshotUri")

    async def main_profile(self) -> MediaProfile:
        profiles = await self.profiles()
        if not profiles:
            raise OnvifError(NOT_SUPPORTED, "the camera has no media profile", camera=self.address,
                             operation="GetProfiles")
        return max(profiles, key=lambda p: p.pixels)

    def _clean_uri(self, uri: str, operation: str) -> str:
        if not uri or "://" not in uri:
            raise OnvifError(BAD_REPLY, "reply carries no usable URI", camera=self.address, operation=operation)
        clean = strip_credentials(uri)
        # Some firmwares write the password into the path (…/user=admin_password=xyz_channel=1…):
        # that URI cannot be made credential-free, and handing it on would leak the password.
        if self._password and len(self._password) >= 4 and self._password in clean:
            raise OnvifError(BAD_REPLY, "the camera's URI embeds the password in a form that cannot be "
                             "removed", camera=self.address, operation=operation)
        return clean


# ---------------------------------------------------------------------- reply helpers
def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace").strip()
    return str(value).strip()


def _number(value: Any, kind: type = int) -> Any:
    try:
        return kind(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _profile(p: Any) -> MediaProfile:
    enc = getattr(p, "VideoEncoderConfiguration", None)
    resolution = getattr(enc, "Resolution", None) if enc is not None else None
    rate = getattr(enc, "RateControl", None) if enc is not None else None
    source = getattr(p, "VideoSourceConfiguration", None)
    ptz = getattr(p, "PTZConfiguration", None)
    return MediaProfile(
        token=_text(p.token),
        name=_text(getattr(p, "Name", "")),
        encoding=_text(getattr(enc, "Encoding", None)) or None if enc is not None else None,
        width=_number(getattr(resolution, "Width", None)),
        height=_number(getattr(resolution, "Height", None)),
        fps=_number(getattr(rate, "FrameRateLimit", None), float),
        bitrate_kbps=_number(getattr(rate, "BitrateLimit", None)),
        video_source_token=_text(getattr(source, "SourceToken", None)) or None if source is not None else None,
        ptz_configuration_token=_text(getattr(ptz, "token", None)) or None if ptz is not None else None,
        ptz_node_token=_text(getattr(ptz, "NodeToken", None)) or None if ptz is not None else None,
    )


_POSIX_TZ = re.compile(r"^\s*[A-Za-z]{3,}(?P<sign>[+-]?)(?P<h>\d{1,2})(?::(?P<m>\d{2}))?(?::(?P<s>\d{2}))?")


def _posix_tz_offset(tz: str) -> timedelta | None:
    """UTC offset of a POSIX TZ string (``CST-8`` is UTC+8: POSIX counts west-positive)."""
    match = _POSIX_TZ.match(tz or "")
    if not match:
        return None
    seconds = int(match["h"]) * 3600 + int(match["m"] or 0) * 60 + int(match["s"] or 0)
    return timedelta(seconds=seconds if match["sign"] == "-" else -seconds)


def _as_datetime(value: Any, tz: timezone) -> datetime:
    d, t = value.Date, value.Time
    return datetime(int(d.Year), int(d.Month), int(d.Day), int(t.Hour), int(t.Minute), int(t.Second), tzinfo=tz)


def _camera_utc(reply: Any) -> tuple[datetime, bool]:
    utc = getattr(reply, "UTCDateTime", None)
    if utc is not None:
        return _as_datetime(utc, UTC), False
    local = getattr(reply, "LocalDateTime", None)
    tz_spec = getattr(getattr(reply, "TimeZone", None), "TZ", None)
    offset = _posix_tz_offset(_text(tz_spec))
    if local is None or offset is None:
        raise ValueError("no UTC time and no usable local time")
    return _as_datetime(local, timezone(offset)).astimezone(UTC), True


async def _close_quietly(device: ONVIFCamera) -> None:
    try:
        await device.close()
    except Exception as exc:  # noqa: BLE001 - closing is best effort
        logger.debug("onvif close failed: %s", type(exc).__name__)
