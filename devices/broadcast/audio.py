"""Broadcast audio: text synthesised server-side with espeak-ng's Mandarin voice (offline),
or a file an operator uploaded; either way one file under the broadcast media directory,
named by its SHA-256, recorded in ``broadcast_audio`` and served to the speakers by URL.

Why server-side: one synthesis serves a thousand speakers; village speakers (村村响 IP
speakers) play files and streams but rarely synthesise Mandarin well; every village hears
the same voice; and the file that was played is kept, with its hash, as the record of what
the villages heard.  The play command still carries the text, for speakers with a display
or their own TTS."""
from __future__ import annotations

import hashlib
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import psycopg
from ulid import ULID

from store.files import make_private, open_private, private_dir

MAX_TEXT = 1000
# What speakers are known to play; anything else is refused at upload.
AUDIO_TYPES = {"audio/mpeg": "mp3", "audio/mp3": "mp3", "audio/wav": "wav", "audio/x-wav": "wav",
               "audio/wave": "wav", "audio/ogg": "ogg", "audio/aac": "aac", "audio/mp4": "m4a"}
EXT_TYPES = {"mp3": "audio/mpeg", "wav": "audio/wav", "ogg": "audio/ogg", "aac": "audio/aac", "m4a": "audio/mp4"}


class AudioError(ValueError):
    """Audio that cannot be made or accepted; the message is for the operator (中文 first)."""


@dataclass(frozen=True)
class Voice:
    """Where the hub keeps synthesised speech and how it speaks (``XLHUB_DEVICES_TTS_*``,
    ``XLHUB_DEVICES_MEDIA_DIR``): the same for the API, alerts and the files the API serves."""
    media_root: Path
    voice: str = "cmn"
    words_per_minute: int = 150

    @classmethod
    def from_settings(cls, devices_settings, var_dir: Path) -> Voice:
        return cls(devices_settings.media_root(var_dir), devices_settings.tts_voice,
                   devices_settings.tts_words_per_minute)


@dataclass(frozen=True)
class AudioFile:
    id: str
    sha256: str
    path: str              # relative to the media root
    media_type: str
    bytes: int
    duration_s: float | None
    origin: str            # tts | upload


def _sha256(path: Path) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def wav_duration(path: Path) -> float | None:
    """Length of a PCM WAV file from its header (espeak-ng writes plain PCM)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
        if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        pos = 12
        byte_rate = None
        while pos + 8 <= len(head):
            cid, size = head[pos:pos + 4], struct.unpack("<I", head[pos + 4:pos + 8])[0]
            if cid == b"fmt ":
                byte_rate = struct.unpack("<I", head[pos + 16:pos + 20])[0]
            elif cid == b"data" and byte_rate:
                data_size = min(size, path.stat().st_size - pos - 8)
                return round(data_size / byte_rate, 2)
            pos += 8 + size + (size & 1)
    except (OSError, struct.error):
        return None
    return None


def probe_duration(path: Path) -> float | None:
    """Duration by ffprobe; None when ffprobe is missing or the file is not audio it knows."""
    if not shutil.which("ffprobe"):
        return wav_duration(path)
    res = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)],
                         capture_output=True, text=True, timeout=30)
    try:
        return round(float(res.stdout.strip()), 2) if res.returncode == 0 else None
    except ValueError:
        return None


# A file that decodes with more errors than this is not audio a speaker can play (ffprobe
# alone takes any bytes that happen to hold MP3 frame headers for an MP3: random data
# often does).
MAX_DECODE_ERRORS = 3


def decode_problem(path: Path) -> str | None:
    """None when the file's first audio stream decodes cleanly (FFmpeg, to nowhere); else
    what FFmpeg said first. None as well when FFmpeg is missing (nothing to judge with)."""
    if not shutil.which("ffmpeg"):
        return None
    try:
        res = subprocess.run(["ffmpeg", "-hide_banner", "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0",
                              "-f", "null", "-"], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return "decoding took longer than 120 s"
    errors = [line for line in res.stderr.splitlines() if line.strip()]
    if res.returncode != 0 or len(errors) > MAX_DECODE_ERRORS:
        return (errors[0] if errors else f"ffmpeg exit status {res.returncode}")[:200]
    return None


def _record(conn: psycopg.Connection, f: AudioFile, text: str | None, created_by: str) -> None:
    conn.execute(
        """INSERT INTO broadcast_audio (id, sha256, path, media_type, bytes, duration_s, origin, text, created_by)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)""",
        (f.id, f.sha256, f.path, f.media_type, f.bytes, f.duration_s, f.origin, text, created_by))


def synthesize(conn: psycopg.Connection, text: str, media_root: Path, *, created_by: str, voice: str = "cmn",
               words_per_minute: int = 150) -> AudioFile:
    """Speak ``text`` with espeak-ng (Mandarin) into an MP3 (WAV when ffmpeg is missing);
    the same text with the same voice reuses the file already made."""
    text = text.strip()
    if not text:
        raise AudioError("广播内容为空 (the text is empty)")
    if len(text) > MAX_TEXT:
        raise AudioError(f"广播内容过长，最多 {MAX_TEXT} 字 (text longer than {MAX_TEXT} characters)")
    if "\x00" in text:
        raise AudioError("广播内容含有无效字符 (the text contains a NUL character)")
    espeak = shutil.which("espeak-ng")
    if not espeak:
        raise AudioError("语音合成不可用：未安装 espeak-ng (espeak-ng is not installed: run scripts/setup)")
    private_dir(media_root)
    key = hashlib.sha256(f"{voice}|{words_per_minute}|{text}".encode()).hexdigest()[:32]
    mp3 = shutil.which("ffmpeg") is not None
    name = f"tts-{key}.{'mp3' if mp3 else 'wav'}"
    final = media_root / name
    duration = None
    if not final.exists():
        with tempfile.TemporaryDirectory(dir=media_root) as tmp:
            wav = Path(tmp) / "speech.wav"
            # The text is one argv item, never a shell string.
            res = subprocess.run([espeak, "-v", voice, "-s", str(words_per_minute), "-w", str(wav), "--", text],
                                 capture_output=True, text=True, timeout=60)
            if res.returncode != 0 or not wav.exists() or wav.stat().st_size < 100:
                raise AudioError(f"语音合成失败 (espeak-ng failed: {res.stderr.strip()[:200]})")
            duration = wav_duration(wav)
            out = wav
            if mp3:
                out = Path(tmp) / "speech.mp3"
                res = subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(wav), "-codec:a", "libmp3lame",
                                      "-b:a", "48k", str(out)], capture_output=True, text=True, timeout=120)
                if res.returncode != 0:
                    raise AudioError(f"音频编码失败 (ffmpeg failed: {res.stderr.strip()[:200]})")
            make_private(out).replace(final)
    if duration is None:
        duration = probe_duration(final)
    sha, size = _sha256(final)
    f = AudioFile(str(ULID()), sha, name, "audio/mpeg" if name.endswith(".mp3") else "audio/wav", size, duration,
                  "tts")
    _record(conn, f, text, created_by)
    return f


def save_upload(conn: psycopg.Connection, stream: BinaryIO, media_type: str | None, filename: str | None,
                media_root: Path, *, created_by: str, max_bytes: int) -> AudioFile:
    """Keep an uploaded audio file (streamed to disk, hashed on the way, size-limited)."""
    ext = AUDIO_TYPES.get((media_type or "").split(";")[0].strip().lower())
    if ext is None and filename and "." in filename:
        ext = filename.rsplit(".", 1)[1].lower()
        ext = ext if ext in EXT_TYPES else None
    if ext is None:
        raise AudioError("不支持的音频格式，请上传 MP3、WAV、OGG、AAC 或 M4A (unsupported audio type)")
    private_dir(media_root)
    h, size = hashlib.sha256(), 0
    tmp = media_root / f".upload-{ULID()}.{ext}"
    try:
        with open_private(tmp) as out:
            while chunk := stream.read(1 << 20):
                size += len(chunk)
                if size > max_bytes:
                    raise AudioError(f"音频文件过大，最多 {max_bytes // (1024 * 1024)} MB (file too large)")
                h.update(chunk)
                out.write(chunk)
        if size == 0:
            raise AudioError("音频文件为空 (empty file)")
        duration = probe_duration(tmp)
        if duration is None and shutil.which("ffprobe"):
            raise AudioError("无法识别的音频文件 (not an audio file ffprobe can read)")
        problem = decode_problem(tmp)
        if problem is not None:
            raise AudioError(f"音频文件已损坏或不是音频，无法解码 (the file does not decode as audio: {problem})")
        sha = h.hexdigest()
        name = f"upload-{sha}.{ext}"
        tmp.replace(media_root / name)
    finally:
        tmp.unlink(missing_ok=True)
    f = AudioFile(str(ULID()), sha, name, EXT_TYPES[ext], size, duration, "upload")
    _record(conn, f, None, created_by)
    return f


def get_audio(conn: psycopg.Connection, audio_id: str) -> dict | None:
    return conn.execute("SELECT * FROM broadcast_audio WHERE id = %s", (audio_id,)).fetchone()
