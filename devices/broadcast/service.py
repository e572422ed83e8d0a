"""Broadcasts (村村响) through the devices layer: a request → at its time, one ``play``
command per speaker under the targets (resolved from the registry's current membership
then, not when the request was made) and one receipt per speaker → the report of which
villages heard it and which did not.

Priority tiers: an emergency warning (应急预警) is tier 9; a notice (通告) is 5, 6 (high)
or 7 (urgent).  A speaker playing something interrupts it for a strictly higher tier (the
interrupted one is reported ``preempted``) and queues anything else behind it.

Stopping (``stop_broadcast``): an operator, a cancelled or superseded CAP warning, or the
broadcast's end time (``ends_at``, a warning's ``<expires>``) stops it on every speaker at
once — a ``stop`` command to each speaker still playing or waiting to, the plays not yet
sent withdrawn — and each receipt ends ``stopped`` when its speaker says so."""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import psycopg
from psycopg.types.json import Jsonb
from ulid import ULID

from bus.commands import PlayCommand, StopCommand
from config.urls import internal_address_reason
from config.vocabulary import BROADCAST_RECEIPT_LABELS as RECEIPT_LABELS
from config.vocabulary import BROADCAST_STATE_LABELS as STATE_LABELS
from config.vocabulary import BROADCAST_VILLAGE_LABELS as VILLAGE_LABELS
from devices.broadcast.audio import Voice, synthesize
from devices.commands.model import Requester
from devices.commands.service import new_command_id
from devices.registry import RegistryError, common_path, get_device, speakers_under
from store import audit

log = logging.getLogger(__name__)

KINDS = ("notice", "emergency")
KIND_LABELS = {"notice": "通告", "emergency": "应急预警"}
EMERGENCY_TIER = 9
NOTICE_TIERS = {"normal": 5, "high": 6, "urgent": 7}

RECEIPT_OPEN = ("pending", "sent", "accepted", "started")
RECEIPT_FINAL = ("finished", "failed", "preempted", "rejected", "expired", "offline", "cancelled", "stopped")
# (The labels of states, receipts and villages are the vocabulary's: config/vocabulary.py.)
# NOTIFY'd at commit when a broadcast is complete or a late answer amends one: the alerts
# worker LISTENs and puts the report (or a note) on the broadcast's case at once.
DONE_CHANNEL = "xlhub_broadcast_done"
# A broadcast in one of these states changes no more (report stored, except ``cancelled``).
FINAL_STATES = ("done", "partial", "failed", "stopped", "cancelled", "no_speakers")
# The end of a broadcast with ``ends_at`` when the requester gave no words for it.
END_REASON = "已到播放截止时间 (the broadcast's end time has passed)"


def tier(kind: str, priority: int | str | None) -> int:
    """The priority tier (1..9, higher interrupts lower) of a broadcast."""
    if kind == "emergency":
        return EMERGENCY_TIER
    if priority is None:
        return NOTICE_TIERS["normal"]
    if isinstance(priority, str):
        if priority not in NOTICE_TIERS:
            raise RegistryError("优先级无效：normal、high 或 urgent (priority must be normal, high or urgent)")
        return NOTICE_TIERS[priority]
    if not 1 <= priority <= 8:
        # 9 is the emergency tier: a notice must not pass for a warning.
        raise RegistryError("通告的优先级为 1–8，9 仅用于应急预警 (notice priority 1..8; 9 is emergencies only)")
    return priority


@dataclass
class BroadcastRequest:
    targets: list[str]
    kind: str = "notice"
    priority: int | str | None = None
    text: str | None = None
    audio_id: str | None = None
    audio_url: str | None = None
    duration_s: float | None = None
    scheduled_at: datetime | None = None
    repeat: int = 1
    volume: int | None = None
    expires_in_s: int = 300
    ends_at: datetime | None = None          # stop playing then (a warning's <expires>)
    end_reason: str | None = None            # what the receipts say then (中文 first)
    detail: dict = field(default_factory=dict)
    live: bool = False       # 实时喊话: the speakers play the operator's voice streamed now (live_path)


def with_speech(conn: psycopg.Connection, req: BroadcastRequest, voice: Voice | None,
                created_by: str) -> BroadcastRequest:
    """Text without audio is synthesised on the hub now (see audio.py), so every speaker
    plays the same file, kept and hashed, and its length is known. Raises AudioError."""
    if voice is None or not req.text or req.audio_id or req.audio_url:
        return req
    f = synthesize(conn, req.text, voice.media_root, created_by=created_by, voice=voice.voice,
                   words_per_minute=voice.words_per_minute)
    req.audio_id, req.duration_s = f.id, req.duration_s or f.duration_s
    return req


def check_audio_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RegistryError("音频地址须为 http(s) 链接 (audio_url must be an http(s) URL)")
    if parts.username or parts.password:
        raise RegistryError("音频地址不得包含用户名或密码 (audio_url must not carry credentials)")
    # Speakers sit inside the county's network: a user must not point them (or anything
    # that follows the link) at the hub itself, the LAN or a metadata service.
    if (why := internal_address_reason(url)) is not None:
        raise RegistryError(f"音频地址不可用：{why} (audio_url refused: internal address)")
    return url


def create_broadcast(conn: psycopg.Connection, req: BroadcastRequest, requester: Requester) -> dict:
    """Record a broadcast (in the caller's transaction); the devices worker sends it when due."""
    if req.kind not in KINDS:
        raise RegistryError("广播类型无效：notice（通告）或 emergency（应急预警） (kind must be notice or emergency)")
    if not req.targets:
        raise RegistryError("请选择广播范围 (at least one target)")
    if not (req.text or req.audio_id or req.audio_url or req.live):
        raise RegistryError("请提供广播内容：文字、音频文件或音频地址 (text, audio_id or audio_url required)")
    if not 1 <= req.repeat <= 10:
        raise RegistryError("重复次数为 1–10 (repeat 1..10)")
    duration = req.duration_s
    if req.audio_id:
        audio = conn.execute("SELECT duration_s FROM broadcast_audio WHERE id = %s", (req.audio_id,)).fetchone()
        if audio is None:
            raise RegistryError("音频文件不存在 (audio not found)", 404)
        duration = duration or audio["duration_s"]
    if req.audio_url:
        check_audio_url(req.audio_url)
    if req.ends_at is not None:
        starts = req.scheduled_at or datetime.now(req.ends_at.tzinfo)
        if req.ends_at <= starts:
            raise RegistryError(f"播放截止时间须晚于开始时间 (ends_at {req.ends_at.isoformat()} is not after the start "
                                f"{starts.isoformat()})")
    scope = common_path(conn, list(dict.fromkeys(req.targets)))
    if not scope:
        raise RegistryError("广播范围无共同上级 (targets share no ancestor)")
    return conn.execute(
        """INSERT INTO device_broadcasts (id, kind, priority, text, audio_id, audio_url, duration_s, repeat, volume,
               targets, scope_path, requested_by, requester_kind, requester_role, requester_node, scheduled_at,
               expires_in_s, ends_at, end_reason, live)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING *""",
        (str(ULID()), req.kind, tier(req.kind, req.priority), req.text, req.audio_id, req.audio_url, duration,
         req.repeat, req.volume, list(dict.fromkeys(req.targets)), scope, requester.name, requester.kind,
         requester.role, requester.node_code, req.scheduled_at, req.expires_in_s, req.ends_at,
         req.end_reason, req.live)).fetchone()


# --------------------------------------------------------------------------- stopping
def stop_broadcast(conn: psycopg.Connection, broadcast_id: str, *, by: str, reason: str, now: datetime,
                   actor_kind: str = "system", audited: bool = True) -> dict:
    """Stop a broadcast on every speaker at once (in the caller's transaction): a scheduled
    one is cancelled; a playing one gets a ``stop`` command to each speaker whose receipt
    is still open (their answers end the receipts ``stopped``), and its plays not yet sent
    are withdrawn (receipt ``cancelled``). Audited (``broadcast.stop``). Stopping a
    broadcast that is stopping already changes nothing; one that has ended is a 409.
    Returns the broadcast's row with ``speakers_told`` and ``plays_withdrawn``; ``audited``
    False when the caller audits the stop itself (the API, with the request's origin)."""
    b = conn.execute("SELECT * FROM device_broadcasts WHERE id = %s FOR UPDATE", (broadcast_id,)).fetchone()
    if b is None:
        raise RegistryError("广播不存在 (broadcast not found)", 404)
    if b["state"] in FINAL_STATES:
        raise RegistryError(f"广播已结束（{STATE_LABELS.get(b['state'], b['state'])}），无需停止 "
                            f"(the broadcast has ended: {b['state']})", 409)
    if b["stop_requested_at"] is not None:
        return {**b, "speakers_told": 0, "plays_withdrawn": 0}
    if b["state"] == "scheduled":
        row = conn.execute(
            """UPDATE device_broadcasts SET state = 'cancelled', cancelled_by = %s, completed_at = %s,
                   stop_requested_at = %s, stopped_by = %s, stop_reason = %s WHERE id = %s RETURNING *""",
            (by, now, now, by, reason, broadcast_id)).fetchone()
        if audited:
            _audit_stop(conn, row, by, actor_kind, reason, told=0, withdrawn=0)
        return {**row, "speakers_told": 0, "plays_withdrawn": 0}
    row = conn.execute("UPDATE device_broadcasts SET stop_requested_at = %s, stopped_by = %s, stop_reason = %s "
                       "WHERE id = %s RETURNING *", (now, by, reason, broadcast_id)).fetchone()
    # Plays not published yet are withdrawn (the worker publishes pending ones under a row
    # lock: this waits for it, then finds them sent and stops them like the rest).
    detail = f"已停止：{reason}"[:1024]
    withdrawn = conn.execute(
        """UPDATE device_commands SET state = 'stopped', finished_at = %(now)s, detail = %(detail)s,
               phases = phases || jsonb_build_array(jsonb_build_object('phase', 'stopped', 'at', %(iso)s::text,
                                                                       'by', 'hub'))
           WHERE broadcast_id = %(b)s AND name = 'play' AND state = 'pending' RETURNING id""",
        {"now": now, "detail": "未发送即停止 (withdrawn before it was sent): " + reason[:900], "iso": now.isoformat(),
         "b": broadcast_id}).fetchall()
    if withdrawn:
        conn.execute(
            """UPDATE device_broadcast_receipts SET status = 'cancelled', detail = %s, finished_at = %s, updated_at = %s
               WHERE broadcast_id = %s AND command_id = ANY(%s) AND status = 'pending'""",
            (detail, now, now, broadcast_id, [w["id"] for w in withdrawn]))
    open_receipts = conn.execute(
        """SELECT r.speaker_id, r.grid_code, r.grid_path, c.expires_at, c.deadline_at, c.requester_kind,
                  c.requester_role, c.requester_node
           FROM device_broadcast_receipts r JOIN device_commands c ON c.id = r.command_id
           WHERE r.broadcast_id = %s AND r.status = ANY(%s)""", (broadcast_id, list(RECEIPT_OPEN))).fetchall()
    body = StopCommand(broadcast_id=broadcast_id, reason=reason[:500]).content()
    commands, ids = [], []
    for r in open_receipts:
        cid = new_command_id()
        # Deliverable as long as the play it stops (a speaker back from an outage gets both,
        # in order), and answered within the answer margin after that.
        expires = max(r["expires_at"], now + timedelta(seconds=STOP_EXPIRY_S))
        deadline = max(r["deadline_at"], expires)
        commands.append((cid, r["speaker_id"], Jsonb(body), by, actor_kind, r["requester_role"], r["requester_node"],
                         now, expires, deadline, r["grid_code"], list(r["grid_path"]), broadcast_id))
        ids.append(r["speaker_id"])
    if commands:
        with conn.cursor() as cur:
            cur.executemany(
                """INSERT INTO device_commands (id, device_id, device_kind, name, body, requested_by, requester_kind,
                       requester_role, requester_node, requested_at, expires_at, deadline_at, grid_code, grid_path,
                       broadcast_id)
                   VALUES (%s, %s, 'speaker', 'stop', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""", commands)
        conn.execute("UPDATE device_broadcast_receipts SET detail = %s, updated_at = %s "
                     "WHERE broadcast_id = %s AND speaker_id = ANY(%s)",
                     (f"已发送停止指令：{reason}"[:1024], now, broadcast_id, ids))
    if audited:
        _audit_stop(conn, row, by, actor_kind, reason, told=len(ids), withdrawn=len(withdrawn))
    complete_if_done(conn, broadcast_id, now)       # when nothing had been sent: every receipt is final now
    return {**row, "speakers_told": len(ids), "plays_withdrawn": len(withdrawn)}


# How long a stop command stays deliverable at least (the broker drops it after).
STOP_EXPIRY_S = 60


def _audit_stop(conn: psycopg.Connection, b: dict, by: str, actor_kind: str, reason: str, *, told: int,
                withdrawn: int) -> None:
    audit.record(conn, audit.AuditEntry(
        actor=by, actor_kind=actor_kind if actor_kind in ("user", "token", "system") else "system",
        action="broadcast.stop", target=b["id"], outcome="ok",
        node_code=b["scope_path"][-1] if b["scope_path"] else None,
        detail={"state": b["state"], "reason": reason, "speakers_told": told, "plays_withdrawn": withdrawn,
                "requested_by": b["requested_by"]}))


def stop_ended(conn: psycopg.Connection, now: datetime) -> list[str]:
    """Broadcasts whose end time (``ends_at``) has come while they play: stopped, with
    their end reason (the devices worker calls this when due)."""
    due = conn.execute(
        """SELECT id, end_reason FROM device_broadcasts
           WHERE state = 'playing' AND stop_requested_at IS NULL AND ends_at <= %s
           ORDER BY ends_at FOR UPDATE SKIP LOCKED""", (now,)).fetchall()
    for b in due:
        stop_broadcast(conn, b["id"], by="devices", reason=b["end_reason"] or END_REASON, now=now)
    return [b["id"] for b in due]


# --------------------------------------------------------------------------- reading
# Seen from a grid node: the broadcasts whose scope is at or under it, and those covering it
# (a county's warning is shown to every township it reached).
_VISIBLE = "(b.scope_path @> ARRAY[%(node)s]::text[] OR b.scope_path <@ %(path)s::text[])"


def target_path(conn: psycopg.Connection, code: str) -> list[str] | None:
    """The grid path of a broadcast target: a grid node in use, or an active speaker's
    grid; None when it is neither."""
    row = conn.execute("SELECT path FROM grid_nodes WHERE code = %s AND retired_at IS NULL", (code,)).fetchone()
    if row is not None:
        return row["path"]
    dev = get_device(conn, code)
    return list(dev.grid_path) if dev and dev.active and dev.kind == "speaker" else None


def visible_broadcast(conn: psycopg.Connection, broadcast_id: str, *, node: str, path: list[str]) -> dict | None:
    """The broadcast if it is seen from grid node ``node`` (whose path is ``path``)."""
    return conn.execute(f"SELECT b.* FROM device_broadcasts b WHERE b.id = %(id)s AND {_VISIBLE}",
                        {"id": broadcast_id, "node": node, "path": list(path)}).fetchone()


def visible_broadcasts(conn: psycopg.Connection, *, node: str, path: list[str], limit: int = 50,
                       state: str | None = None) -> list[dict]:
    """Broadcasts seen from grid node ``node``, newest first, each with ``counts``: its
    receipts per status under ``node`` (a county's warning seen from a township counts
    the township's speakers only; ``{}`` before it is sent)."""
    rows = conn.execute(
        f"""SELECT b.*, (SELECT jsonb_object_agg(status, n) FROM (SELECT status, count(*) AS n
                          FROM device_broadcast_receipts r WHERE r.broadcast_id = b.id
                            AND r.grid_path @> ARRAY[%(node)s]::text[] GROUP BY status) c) AS counts
            FROM device_broadcasts b WHERE {_VISIBLE} {"AND b.state = %(state)s" if state else ""}
            ORDER BY b.requested_at DESC LIMIT %(limit)s""",
        {"node": node, "path": list(path), "limit": limit, "state": state}).fetchall()
    return [{**r, "counts": r["counts"] or {}} for r in rows]


def receipt_counts(conn: psycopg.Connection, broadcast_id: str, within: str | None = None) -> dict[str, int]:
    """A broadcast's receipts per status (``{}`` before it is sent); ``within``: only the
    speakers under this grid node (the caller's scope)."""
    return conn.execute("SELECT jsonb_object_agg(status, n) AS c FROM (SELECT status, count(*) AS n FROM "
                        "device_broadcast_receipts WHERE broadcast_id = %s "
                        "AND (%s::text IS NULL OR grid_path @> ARRAY[%s::text]) GROUP BY status) x",
                        (broadcast_id, within, within)).fetchone()["c"] or {}


def for_speaker(conn: psycopg.Connection, broadcast_id: str, speaker_id: str) -> dict | None:
    """The broadcast if this speaker was told to play it (it has a receipt for it)."""
    ok = conn.execute("SELECT 1 FROM device_broadcast_receipts WHERE broadcast_id = %s AND speaker_id = %s",
                      (broadcast_id, speaker_id)).fetchone()
    if ok is None:
        return None
    return conn.execute("SELECT * FROM device_broadcasts WHERE id = %s", (broadcast_id,)).fetchone()


# --------------------------------------------------------------------------- dispatch
@dataclass
class DispatchOptions:
    media_base_url: str
    answer_margin_s: float = 30.0
    default_duration_s: float = 30.0
    # signs a hub path for a device to fetch (store/links.py): (path, ttl_s[, sub=speaker]) → path?exp=…&sig=…
    sign: Callable[..., str] | None = None


def audio_path(broadcast_id: str) -> str:
    return f"/api/broadcasts/{broadcast_id}/audio"


LIVE_MEDIA_TYPE = "audio/mpeg"


def live_path(broadcast_id: str) -> str:
    """Where speakers fetch a live broadcast's stream (实时喊话, api/devices/voice.py)."""
    return f"/api/broadcasts/{broadcast_id}/live.mp3"


def dispatch_due(conn: psycopg.Connection, now: datetime, online: dict[str, bool], opts: DispatchOptions) -> list[str]:
    """Fan out every broadcast whose time has come: a play command and a receipt per
    speaker under its targets. ``online`` is the hub's current belief per device."""
    due = conn.execute(
        """SELECT b.*, a.sha256 AS audio_sha256, a.media_type AS audio_media_type
           FROM device_broadcasts b LEFT JOIN broadcast_audio a ON a.id = b.audio_id
           WHERE b.state = 'scheduled' AND coalesce(b.scheduled_at, b.requested_at) <= %s
           ORDER BY b.priority DESC, coalesce(b.scheduled_at, b.requested_at) FOR UPDATE OF b SKIP LOCKED""",
        (now,)).fetchall()
    sent = []
    for b in due:
        if b["ends_at"] is not None and b["ends_at"] <= now:
            # Its end came before its time to play (a warning that expired while it waited).
            reason = b["end_reason"] or END_REASON
            conn.execute("UPDATE device_broadcasts SET state = 'cancelled', cancelled_by = 'devices', completed_at = %s, "
                         "stop_requested_at = %s, stopped_by = 'devices', stop_reason = %s WHERE id = %s",
                         (now, now, reason, b["id"]))
            _audit_stop(conn, b, "devices", "system", reason, told=0, withdrawn=0)
            continue
        speakers = speakers_under(conn, list(b["targets"]))
        if not speakers:
            conn.execute("UPDATE device_broadcasts SET state = 'no_speakers', dispatched_at = %s, completed_at = %s "
                         "WHERE id = %s", (now, now, b["id"]))
            complete_if_done(conn, b["id"], now)
            continue
        duration = float(b["duration_s"] or opts.default_duration_s)
        audio = {"audio_url": b["audio_url"]}
        if b["audio_id"]:
            path = audio_path(b["id"])
            if opts.sign is not None:
                # good until the command expires and the audio has played: then useless
                path = opts.sign(path, b["expires_in_s"] + duration * b["repeat"] + opts.answer_margin_s)
            audio = {"audio_url": opts.media_base_url.rstrip("/") + path,
                     "audio_sha256": b["audio_sha256"], "media_type": b["audio_media_type"]}
        elif b["live"]:
            audio = {"audio_url": opts.media_base_url.rstrip("/") + live_path(b["id"]),
                     "media_type": LIVE_MEDIA_TYPE, "live": True}

        def body_for(speaker_id: str) -> dict:
            a = audio
            if b["live"] and opts.sign is not None:
                # 实时喊话: a link for this speaker only (sub), good until its command expires
                a = {**audio, "audio_url": opts.media_base_url.rstrip("/") + opts.sign(
                    live_path(b["id"]), b["expires_in_s"] + opts.answer_margin_s, sub=speaker_id)}
            return PlayCommand(broadcast_id=b["id"], kind=b["kind"], priority=b["priority"], repeat=b["repeat"],
                               duration_s=duration, text=b["text"] or None, volume=b["volume"], **a).content()
        expires = now + timedelta(seconds=b["expires_in_s"])
        if b["ends_at"] is not None:
            expires = min(expires, b["ends_at"])     # never delivered to play after its end
        # No answer by the end of the (repeated) audio plus a margin — and plus the time it
        # may wait for delivery — and the speaker is reported as not having played it.
        deadline = expires + timedelta(seconds=duration * b["repeat"] + opts.answer_margin_s)
        commands, receipts = [], []
        for s in speakers:
            cid = new_command_id()
            commands.append((cid, s.id, Jsonb(body_for(s.id)), b["requested_by"], b["requester_kind"], b["requester_role"],
                             b["requester_node"], now, expires, deadline, s.grid_code, list(s.grid_path), b["id"]))
            receipts.append((b["id"], s.id, s.grid_code, list(s.grid_path), s.village_code, cid,
                             bool(online.get(s.id, False)), now))
        with conn.cursor() as cur:
            cur.executemany(
                """INSERT INTO device_commands (id, device_id, device_kind, name, body, requested_by, requester_kind,
                       requester_role, requester_node, requested_at, expires_at, deadline_at, grid_code, grid_path,
                       broadcast_id)
                   VALUES (%s, %s, 'speaker', 'play', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""", commands)
            cur.executemany(
                """INSERT INTO device_broadcast_receipts (broadcast_id, speaker_id, grid_code, grid_path, village_code,
                       command_id, online_at_send, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)""", receipts)
        conn.execute("UPDATE device_broadcasts SET state = 'playing', dispatched_at = %s WHERE id = %s",
                     (now, b["id"]))
        sent.append(b["id"])
    return sent


# --------------------------------------------------------------------------- receipts
_RECEIPT_RANK = "array_position(ARRAY['pending','sent','accepted','started']::text[], status)"


def _receipt(conn: psycopg.Connection, where: str, params: dict, status: str, at: datetime,
             detail: str | None) -> str | None:
    """Move a receipt forward (never back, never out of a final status); returns its broadcast id."""
    if status in RECEIPT_FINAL:
        guard = "status NOT IN ('finished','failed','preempted','rejected','expired','offline','cancelled')"
    else:
        guard = f"{_RECEIPT_RANK} < array_position(ARRAY['pending','sent','accepted','started']::text[], %(status)s)"
    row = conn.execute(
        f"""UPDATE device_broadcast_receipts SET status = %(status)s, updated_at = %(at)s,
                detail = coalesce(%(detail)s, detail),
                sent_at = CASE WHEN %(status)s = 'sent' THEN %(at)s ELSE sent_at END,
                started_at = CASE WHEN %(status)s = 'started' THEN coalesce(started_at, %(at)s) ELSE started_at END,
                finished_at = CASE WHEN %(final)s THEN %(at)s ELSE finished_at END
            WHERE {where} AND {guard} RETURNING broadcast_id""",
        {**params, "status": status, "at": at, "detail": detail, "final": status in RECEIPT_FINAL}).fetchone()
    return row["broadcast_id"] if row else None


def on_commands_sent(conn: psycopg.Connection, command_ids: list[str], at: datetime) -> None:
    if command_ids:
        conn.execute("""UPDATE device_broadcast_receipts SET status = 'sent', sent_at = %s, updated_at = %s
                        WHERE command_id = ANY(%s) AND status = 'pending'""", (at, at, command_ids))


# What a play command's state means for its receipt (res phases). ``progress`` is not
# ``started``: a play queued behind another reports progress too; only the speaker's
# playback event says it started.
_COMMAND_TO_RECEIPT = {"accepted": "accepted", "finished": "finished", "failed": "failed",
                       "rejected": "rejected", "preempted": "preempted", "expired": "expired", "stopped": "stopped"}


def on_command_state(conn: psycopg.Connection, command: dict, at: datetime) -> str | None:
    """A play command moved (device answer or hub timeout): its receipt follows. (A stop
    command has no receipt of its own: the play it stops moves the receipt.)"""
    if command.get("name") not in (None, "play"):
        return None
    status = _COMMAND_TO_RECEIPT.get(command["state"])
    if status is None:
        return None
    if status == "expired":
        # No answer: a speaker already offline when it was sent did not hear it (离线未收听).
        row = conn.execute("SELECT online_at_send FROM device_broadcast_receipts WHERE command_id = %s",
                           (command["id"],)).fetchone()
        if row is not None and not row["online_at_send"]:
            status = "offline"
    return _receipt(conn, "command_id = %(cid)s", {"cid": command["id"]}, status, at, command.get("detail"))


def on_playback(conn: psycopg.Connection, broadcast_id: str, speaker_id: str, phase: str, at: datetime,
                detail: str | None = None) -> str | None:
    """A speaker's ``evt/playback`` receipt (started, finished, failed, preempted, stopped)."""
    if phase not in PLAYBACK_PHASES:
        return None
    return _receipt(conn, "broadcast_id = %(b)s AND speaker_id = %(s)s", {"b": broadcast_id, "s": speaker_id},
                    phase, at, detail)


# --------------------------------------------------------------------------- late answers
# A receipt the hub closed for want of an answer (``expired``, or ``offline``: offline when
# sent and silent since) can still get one: the speaker's network came back after the
# deadline, say. Such an answer is evidence, so it is kept, but it does not reopen the
# receipt: the report was stored (and handed to a case, audited) when the last receipt
# was final, as what the hub knew at its deadline, and stays so. The receipt keeps what
# the speaker said after all (``late_status``, ``late_at``); the report built from the
# receipts (the API's) shows it, and counts a village whose every speaker played —
# some answering late — as heard (已收听（回执迟到）). (An answer that was sent in time but
# waited in the broker while the devices worker was away is not late: the worker judges
# deadlines only once it has read what the broker kept for it — devices/worker.py.)
LATE_PHASES = ("started", "finished", "failed", "preempted")
# (``stopped`` is a receipt's phase too, but never late: the hub stops only open receipts.)
PLAYBACK_PHASES = (*LATE_PHASES, "stopped")
_LATE_CLOSED = ("expired", "offline")
LATE_LABELS = {"started": "超时后回执：开始播放", "finished": "超时后回执：已播放完成", "failed": "超时后回执：播放失败",
               "preempted": "超时后回执：被打断"}


def on_late_answer(conn: psycopg.Connection, where: str, params: dict, phase: str, at: datetime) -> bool:
    """Record a playback phase a speaker reported after its receipt was closed as expired
    or offline. ``started`` gives way to any outcome, an outcome to none. Returns whether
    the receipt took it; a late ``finished`` is audited (it amends a stored report)."""
    if phase not in LATE_PHASES:
        return False
    row = conn.execute(
        f"""UPDATE device_broadcast_receipts SET late_status = %(phase)s, late_at = %(at)s
            WHERE {where} AND status = ANY(%(closed)s)
              AND (late_status IS NULL OR (late_status = 'started' AND %(phase)s <> 'started'))
            RETURNING broadcast_id, speaker_id, status, grid_code""",
        {**params, "phase": phase, "at": at, "closed": list(_LATE_CLOSED)}).fetchone()
    if row is None:
        return False
    conn.execute("SELECT pg_notify(%s, %s)", (DONE_CHANNEL, row["broadcast_id"]))   # a note for its case
    if phase == "finished":
        audit.record(conn, audit.AuditEntry(
            actor="devices", actor_kind="system", action="broadcast.late_receipt", target=row["broadcast_id"],
            outcome="ok", node_code=row["grid_code"],
            detail={"speaker_id": row["speaker_id"], "status": row["status"], "late_status": phase,
                    "late_at": at.isoformat()}))
    return True


def on_late_playback(conn: psycopg.Connection, broadcast_id: str, speaker_id: str, phase: str, at: datetime) -> bool:
    """A speaker's ``evt/playback`` after its receipt was closed (see on_late_answer)."""
    return on_late_answer(conn, "broadcast_id = %(b)s AND speaker_id = %(s)s", {"b": broadcast_id, "s": speaker_id},
                          phase, at)


def on_late_command_phase(conn: psycopg.Connection, command: dict, phase: str, at: datetime) -> bool:
    """A play command's ``res`` phase that came after the command was final (the same
    answer as ``evt/playback``, for speakers that only answer on ``res``)."""
    # (``progress`` is no evidence of playing: a play queued behind another reports it too.)
    if phase not in LATE_PHASES or not command.get("broadcast_id") or command["state"] != "expired":
        return False
    return on_late_answer(conn, "command_id = %(cid)s", {"cid": command["id"]}, phase, at)


# --------------------------------------------------------------------------- report
def complete_if_done(conn: psycopg.Connection, broadcast_id: str, now: datetime) -> dict | None:
    """When no receipt is open any more: the broadcast's final state and report, audited."""
    b = conn.execute("SELECT * FROM device_broadcasts WHERE id = %s FOR UPDATE", (broadcast_id,)).fetchone()
    if b is None or b["report"] is not None or b["state"] in ("scheduled", "cancelled"):
        return None
    open_left = conn.execute(
        "SELECT count(*) AS n FROM device_broadcast_receipts WHERE broadcast_id = %s AND status = ANY(%s)",
        (broadcast_id, list(RECEIPT_OPEN))).fetchone()["n"]
    if open_left:
        return None
    report = build_report(conn, b)
    state = "no_speakers" if b["state"] == "no_speakers" else report["outcome"]
    conn.execute("UPDATE device_broadcasts SET state = %s, completed_at = %s, report = %s WHERE id = %s",
                 (state, now, Jsonb(report), broadcast_id))
    # The alerts worker puts the report on the broadcast's case: look now, at commit.
    conn.execute("SELECT pg_notify(%s, %s)", (DONE_CHANNEL, broadcast_id))
    audit.record(conn, audit.AuditEntry(
        actor="devices", actor_kind="system", action="broadcast.completed", target=broadcast_id, outcome="ok",
        node_code=b["scope_path"][-1] if b["scope_path"] else None,
        detail={"state": state, "speakers": report["speakers"], "villages_heard": len(report["heard"]),
                "villages_not_heard": len(report["not_heard"]), "requested_by": b["requested_by"]}))
    return report


def build_report(conn: psycopg.Connection, b: dict, within: str | None = None) -> dict:
    """Which villages heard the broadcast and which did not (and why), per speaker.
    ``within``: only the receipts under this grid node (the caller's scope)."""
    rows = conn.execute(
        """SELECT r.speaker_id, d.name AS speaker_name, r.grid_code, r.village_code,
                  coalesce(v.name, g.name) AS village_name, r.status, r.detail, r.online_at_send, r.sent_at,
                  r.started_at, r.finished_at, r.late_status, r.late_at
           FROM device_broadcast_receipts r
           LEFT JOIN devices d ON d.id = r.speaker_id
           LEFT JOIN grid_nodes v ON v.code = r.village_code
           LEFT JOIN grid_nodes g ON g.code = r.grid_code
           WHERE r.broadcast_id = %s AND (%s::text IS NULL OR r.grid_path @> ARRAY[%s::text])
           ORDER BY r.village_code NULLS LAST, r.speaker_id""", (b["id"], within, within)).fetchall()
    counts: dict[str, int] = {}
    late: dict[str, int] = {}
    villages: dict[str, dict] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
        if r["late_status"]:
            late[r["late_status"]] = late.get(r["late_status"], 0) + 1
        key = r["village_code"] or r["grid_code"] or "-"
        v = villages.setdefault(key, {"code": key, "name": r["village_name"] or key, "speakers": []})
        label = RECEIPT_LABELS.get(r["status"], r["status"])
        if r["late_status"]:
            label += f"（{LATE_LABELS[r['late_status']]}）"
        v["speakers"].append({
            "id": r["speaker_id"], "name": r["speaker_name"], "status": r["status"],
            "status_label": label, "detail": r["detail"],
            "online_at_send": r["online_at_send"],
            "started_at": r["started_at"].isoformat() if r["started_at"] else None,
            "finished_at": r["finished_at"].isoformat() if r["finished_at"] else None,
            "late_status": r["late_status"], "late_at": r["late_at"].isoformat() if r["late_at"] else None})
    heard, not_heard = [], []
    for v in villages.values():
        statuses = [s["status"] for s in v["speakers"]]
        # A late ``finished`` (see on_late_answer): the village heard it, the hub learnt so late.
        played = [s["status"] == "finished" or s["late_status"] == "finished" for s in v["speakers"]]
        if any(s in RECEIPT_OPEN for s in statuses):
            v["status"] = "in_progress"
        elif all(s == "finished" for s in statuses):
            v["status"] = "heard"
        elif all(played):
            v["status"] = "heard_late"
        elif any(played) or "preempted" in statuses or any(
                s["status"] == "stopped" and s["started_at"] for s in v["speakers"]):
            v["status"] = "partial"     # heard on some speakers, or cut short (a higher tier, a stop)
        else:
            v["status"] = "not_heard"
        v["status_label"] = VILLAGE_LABELS[v["status"]]
        if v["status"] == "heard":
            heard.append({"code": v["code"], "name": v["name"]})
        elif v["status"] == "heard_late":
            heard.append({"code": v["code"], "name": v["name"], "late": True})
        elif v["status"] in ("partial", "not_heard"):
            not_heard.append({"code": v["code"], "name": v["name"], "status": v["status"],
                              "reasons": sorted({s["status_label"] for s in v["speakers"] if s["status"] != "finished"})})
    total = len(rows)
    finished = counts.get("finished", 0)
    still_open = sum(counts.get(s, 0) for s in RECEIPT_OPEN)
    stopped = counts.get("stopped", 0) + counts.get("cancelled", 0)
    # The outcome is the hub's judgement at the deadline (the broadcast's final state): a
    # late answer is shown beside it, it does not change it. Before then it is ``playing``:
    # a speaker that has not answered finally has not failed (yet).
    if still_open:
        outcome = "playing"
    elif stopped and b.get("stop_requested_at"):
        outcome = "stopped"
    else:
        outcome = "done" if total and finished == total else ("partial" if finished else "failed")
    if still_open:
        summary = (f"播放中：{len(villages)} 个村（社区），{finished}/{total} 个喇叭已播放完成，"
                   f"{still_open} 个正在播放或等待回执")
    else:
        summary = (f"{len(villages)} 个村（社区）中 {len(heard)} 个已收听，{len(not_heard)} 个未完整收听；"
                   f"{finished}/{total} 个喇叭播放完成")
    if b.get("stop_requested_at"):
        summary = f"已停止（{b['stop_reason']}）；" + summary
    if late.get("finished"):
        summary += f"；另有 {late['finished']} 个喇叭超时后回执已播放完成"
    return {
        "broadcast_id": b["id"], "kind": b["kind"], "kind_label": KIND_LABELS[b["kind"]], "priority": b["priority"],
        "text": b["text"], "requested_by": b["requested_by"],
        "requested_at": b["requested_at"].isoformat(),
        "dispatched_at": b["dispatched_at"].isoformat() if b.get("dispatched_at") else None,
        "outcome": outcome, "outcome_label": STATE_LABELS[outcome], "summary": summary,
        "ends_at": b["ends_at"].isoformat() if b.get("ends_at") else None,
        "stop": {"at": b["stop_requested_at"].isoformat(), "by": b["stopped_by"], "reason": b["stop_reason"]}
        if b.get("stop_requested_at") else None,
        "speakers": {"total": total, **counts}, "late": late,
        "heard": heard, "not_heard": not_heard, "villages": list(villages.values()),
    }
