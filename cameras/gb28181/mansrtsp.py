"""MANSRTSP (GB/T 28181-2016 Appendix B): playback control inside an s=Playback dialog, carried
by SIP INFO with ``Content-Type: Application/MANSRTSP``. RTSP-like lines:

    PLAY MANSRTSP/1.0          PLAY MANSRTSP/1.0          PAUSE MANSRTSP/1.0
    CSeq: 2                    CSeq: 3                    CSeq: 4
    Scale: 2.0                 Range: npt=125-            PauseTime: now

``Scale`` is the speed (0.25 … 4 on most NVRs; 1 plain resume), ``Range: npt=<s>-`` a seek to
seconds from the start of the dialog's range (``npt=now-`` or ``npt=0-`` with no seek meant:
resume where it is), ``PauseTime: now`` pause at once. The end of a device's file comes the
other way, as a MANSCDP ``MediaStatus`` Notify with ``NotifyType`` 121 (cameras/gb28181/manscdp.py)."""
from __future__ import annotations

from dataclasses import dataclass

CONTENT_TYPE = "Application/MANSRTSP"
SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)
MEDIA_END = "121"               # MediaStatus NotifyType: the device's file (the range) has ended


@dataclass(frozen=True)
class Command:
    method: str                     # PLAY | PAUSE | TEARDOWN
    cseq: int
    scale: float | None = None
    npt: float | None = None        # seek: seconds from the range's start (None: where it is)


def play(cseq: int, *, scale: float | None = None, npt: float | None = None) -> bytes:
    lines = ["PLAY MANSRTSP/1.0", f"CSeq: {cseq}"]
    if scale is not None:
        lines.append(f"Scale: {scale:g}")
    if npt is not None:
        lines.append(f"Range: npt={npt:g}-")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def pause(cseq: int) -> bytes:
    return f"PAUSE MANSRTSP/1.0\r\nCSeq: {cseq}\r\nPauseTime: now\r\n\r\n".encode("ascii")


def parse(body: bytes) -> Command:
    """A MANSRTSP request; ValueError naming what is wrong (platforms write ``Scal``/no spaces/LF only)."""
    text = body.decode("utf-8", "replace").strip()
    if not text:
        raise ValueError("empty MANSRTSP body")
    lines = [ln.strip() for ln in text.splitlines()]
    parts = lines[0].split()
    if len(parts) != 2 or not parts[1].upper().startswith("MANSRTSP/"):
        raise ValueError(f"not a MANSRTSP request line: {lines[0][:60]!r}")
    method = parts[0].upper()
    if method not in ("PLAY", "PAUSE", "TEARDOWN"):
        raise ValueError(f"unknown MANSRTSP method {method[:20]!r}")
    fields = {}
    for ln in lines[1:]:
        key, sep, value = ln.partition(":")
        if sep:
            fields[key.strip().lower()] = value.strip()
    try:
        cseq = int(fields.get("cseq", "0"))
        scale = float(fields["scale"]) if fields.get("scale") else None
    except ValueError:
        raise ValueError(f"bad CSeq or Scale in MANSRTSP: {fields}") from None
    if scale is not None and not 0 < scale <= 64:
        raise ValueError(f"Scale {scale:g} out of range")
    npt = None
    rng = fields.get("range", "")
    if rng.lower().startswith("npt="):
        first = rng[4:].split("-")[0].strip()
        if first and first.lower() != "now":
            try:
                npt = float(first)
            except ValueError:
                raise ValueError(f"bad Range {rng[:40]!r}") from None
    return Command(method, cseq, scale, npt)


__all__ = ["CONTENT_TYPE", "Command", "MEDIA_END", "SCALES", "parse", "pause", "play"]
