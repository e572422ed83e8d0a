"""The batch writer of the ingest path: normalise a batch of received MQTT messages,
resolve each source's grid from the registry, write everything with binary COPY in one
transaction, and say what was stored (the consumer acks only after this commits).

- device_telemetry, device_positions, camera_health, dead_letters: plain binary COPY.
  Telemetry is at-least-once: a batch committed just before a crash (before its acks
  reached the broker) is delivered again and stored twice. Readers that care use
  (device_id, msg_id).
- events: COPY into a per-connection temp table, then ``INSERT … SELECT DISTINCT ON
  (source_id, msg_id) … WHERE NOT EXISTS`` an event with the same (source_id, msg_id)
  received within DEDUPE_WINDOW, so a redelivered event is never stored twice. Each new
  event gets a ULID; the device's own id is kept in ``msg_id``. After the commit a
  ``NOTIFY xlhub_events`` tells listeners (alerts/) that events arrived.
- A message that fails the contract, names an unknown source, or names a source under
  the wrong kind goes to dead_letters with its raw bytes and the reason. A batch the
  database refuses for a reason other than a lost connection is retried message by
  message, and the messages it still refuses are dead-lettered: one poison message never
  wedges the stream.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg
from psycopg import postgres
from psycopg.adapt import Dumper
from psycopg.pq import Format
from psycopg.types.json import set_json_dumps

from pydantic import ValidationError

from bus.envelope import ContractError, ENVELOPE_FIELDS, MAX_PAYLOAD_BYTES
from bus.normalise import CameraHealthRow, EventRow, PositionRow, TelemetryRow, normalise
from bus.telemetry import TELEMETRY
from bus.topics import Topic, parse_topic
from config.vocabulary import DEVICE_KINDS
from store.sources import Source, SourceCache

log = logging.getLogger(__name__)

# How far back a redelivered event is looked for. Redelivery comes from the broker's
# persistent session (expiry 1 day) or a retained message; 3 days covers both with margin
# and keeps the check an index range scan on events_source (source_id, time).
DEDUPE_WINDOW = "3 days"
# A device clock further than this from the hub's is counted as skewed.
SKEW_LIMIT_S = 300.0

# One received MQTT message: (topic bytes, payload bytes, qos, mid, retain, received epoch s, generation)
Item = tuple


@dataclass
class Prepared:
    """One batch after normalisation: the rows per table and what was refused."""
    telemetry: list[tuple] = field(default_factory=list)
    positions: list[tuple] = field(default_factory=list)
    camera_health: list[tuple] = field(default_factory=list)
    events: list[tuple] = field(default_factory=list)
    dead: list[tuple] = field(default_factory=list)
    ignored: int = 0
    skewed: int = 0
    source_times: list[float] = field(default_factory=list)   # device ts of stored rows (latency probes)
    retry_unknown: bool = False
    retained: list[bytes] = field(default_factory=list)       # topics whose retained copy is to be cleared

    @property
    def rows(self) -> int:
        return len(self.telemetry) + len(self.positions) + len(self.camera_health) + len(self.events)


def _dt(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _topic_text(topic: bytes) -> str:
    return topic.decode("utf-8", errors="replace")


def _dead(item: Item, reason: str) -> tuple:
    topic, payload, qos, _mid, retain, received, _gen = item
    return (_dt(received), _topic_text(topic), bytes(payload), reason[:2000], qos, bool(retain))


# Parsed topics, keyed by their raw bytes: a fleet reuses a few topics per device, and
# parsing (split + checks) is a third of the per-message cost. Bounded: cleared when full.
_TOPICS: dict[bytes, Topic] = {}
_TOPICS_MAX = 200_000


# Telemetry, events and command results are news: a retained copy would be handed to every
# consumer that subscribes later as if it were new (an old alarm raised again). Such a
# message is refused (dead letter) and the broker's copy is cleared; availability and state
# are retained by design (the last will, the device's current state).
NOT_RETAINED = frozenset({"tele", "evt", "res"})
RETAINED_REASON = ("保留消息：遥测、事件与命令结果不得保留，未作为新消息入库，代理上的保留副本已清除 "
                   "(retained message: telemetry, events and command results must not be retained; "
                   "not stored as new, and the broker's retained copy was cleared)")


def _parse_topic_cached(topic: bytes) -> Topic:
    t = _TOPICS.get(topic)
    if t is None:
        t = parse_topic(topic)          # raises ContractError: bad topics are never cached
        if len(_TOPICS) >= _TOPICS_MAX:
            _TOPICS.clear()
        _TOPICS[topic] = t
    return t


# Device telemetry is nearly all of the traffic. It takes a short path that calls the
# contract's own schema and builds the rows' tuples straight from the validated model:
# the same checks and the same rows as bus.normalise.normalise (tests/ingest/
# test_prepare.py compares the two on valid and broken input) for ~2 µs less CPU per
# message. Anything that does not pass it cleanly (unknown source, invalid payload, ...)
# goes through normalise, which says why.
_SHORT_PATH_ON = True
_SHORT_PATH = {kind: (TELEMETRY[kind].__pydantic_validator__.validate_json,
                      TELEMETRY[kind].__pydantic_serializer__.to_json,
                      {"drone": "full", "radio": "lat_lon"}.get(kind))
               for kind in DEVICE_KINDS}


def _telemetry_short(t: Topic, payload, at: datetime, src: Source | None, tele: list, pos: list) -> float | None:
    """Append the rows of a valid ``tele`` message of a registered, active device of its
    kind and return its device time (epoch s); None, and nothing appended, for anything
    else."""
    if src is None or not src.active or src.kind != t.kind or type(payload) is not bytes \
            or not 0 < len(payload) <= MAX_PAYLOAD_BYTES or b"\\u0000" in payload:
        return None
    validate, dump, position = _SHORT_PATH[t.kind]
    try:
        m = validate(payload)
    except ValidationError:
        return None
    grid, ts = src.grid_code, m.ts
    tele.append((at, t.source_id, t.kind, ts, m.seq, m.id, grid,
                 dump(m, exclude=ENVELOPE_FIELDS, exclude_none=True).decode()))
    if position == "full":
        pos.append((at, t.source_id, ts, m.lat, m.lon, m.alt_m, m.heading_deg, m.speed_mps, grid))
    elif position == "lat_lon":
        pos.append((at, t.source_id, ts, m.lat, m.lon, None, None, None, grid))
    return ts.timestamp()


def prepare(items: list[Item], registry: SourceCache, *, probe_times: bool = False) -> Prepared:
    """Normalise a batch (pure CPU, no database). Never raises for bad input."""
    out = Prepared()
    tele, pos, cam, evt = out.telemetry, out.positions, out.camera_health, out.events
    kind_of = registry.kind_of
    sources = registry.sources
    cache: dict[float, datetime] = {}
    for item in items:
        topic, payload, _qos, _mid, retain, received, _gen = item
        at = cache.get(received)
        if at is None:
            at = cache[received] = _dt(received)
        try:
            t = _parse_topic_cached(topic)
            if t.channel == "cmd":
                out.ignored += 1
                continue
            if retain and t.channel in NOT_RETAINED:
                if not payload:             # the clearing of a retained copy (ours): nothing to say
                    out.ignored += 1
                    continue
                out.dead.append(_dead(item, RETAINED_REASON))
                out.retained.append(topic)
                continue
            st = None           # the device's time of the message (epoch s), when it gives one
            if t.channel == "tele" and t.kind in _SHORT_PATH and _SHORT_PATH_ON:
                st = _telemetry_short(t, payload, at, sources.get(t.source_id), tele, pos)
            rows = normalise(t, payload, at, kind_of) if st is None else ()
        except ContractError as exc:
            out.dead.append(_dead(item, exc.reason))
            if exc.reason.startswith("source: unknown"):
                out.retry_unknown = True
            continue
        except Exception as exc:  # a bug in a parser must not stop the stream
            log.exception("normalise failed on %r", topic[:200])
            out.dead.append(_dead(item, f"internal error while validating: {type(exc).__name__}: {exc}"))
            continue
        src = sources[t.source_id]
        grid = src.grid_code
        for row in rows:
            if type(row) is TelemetryRow:
                tele.append((row.time, row.device_id, row.kind, row.source_time, row.seq, row.msg_id, grid,
                             row.data))
            elif type(row) is PositionRow:
                pos.append((row.time, row.device_id, row.source_time, row.lat, row.lon, row.alt_m,
                            row.heading_deg, row.speed_mps, grid))
            elif type(row) is CameraHealthRow:
                cam.append((row.time, row.camera_id, row.state, row.fps, row.bitrate_kbps, row.keyframe_interval,
                            row.reconnects, row.ttff_ms, row.last_frame_age_ms, grid, row.problem,
                            row.problem_detail))
            elif type(row) is EventRow:
                evt.append((row.time, row.id, row.source_time, row.source_kind, row.source_id, row.type, grid,
                            src.grid_path, row.severity, row.lat, row.lon, row.msg_id, row.payload, row.evidence))
        if rows and rows[0].source_time is not None:
            st = rows[0].source_time.timestamp()
        if st is not None:
            skew = received - st
            if skew > SKEW_LIMIT_S or skew < -SKEW_LIMIT_S:
                out.skewed += 1
            if probe_times:
                out.source_times.append(st)
    return out


COPY_TELEMETRY = ("COPY device_telemetry (time, device_id, kind, source_time, seq, msg_id, grid_code, data) "
                  "FROM STDIN (FORMAT BINARY)")
TYPES_TELEMETRY = ["timestamptz", "text", "text", "timestamptz", "int8", "text", "text", "jsonb"]
COPY_POSITIONS = ("COPY device_positions (time, device_id, source_time, lat, lon, alt_m, heading_deg, speed_mps, "
                  "grid_code) FROM STDIN (FORMAT BINARY)")
TYPES_POSITIONS = ["timestamptz", "text", "timestamptz", "float8", "float8", "float4", "float4", "float4", "text"]
COPY_CAMERA = ("COPY camera_health (time, camera_id, state, fps, bitrate_kbps, keyframe_interval, reconnects, "
               "ttff_ms, last_frame_age_ms, grid_code, problem, problem_detail) FROM STDIN (FORMAT BINARY)")
TYPES_CAMERA = ["timestamptz", "text", "text", "float4", "float4", "float4", "int4", "float4", "float4", "text", "text",
                "text"]
EVENT_COLUMNS = ("time, id, source_time, source_kind, source_id, type, grid_code, grid_path, severity, lat, lon, "
                 "msg_id, payload, evidence")
COPY_EVENTS = f"COPY _ingest_events ({EVENT_COLUMNS}) FROM STDIN (FORMAT BINARY)"
TYPES_EVENTS = ["timestamptz", "text", "timestamptz", "text", "text", "text", "text", "text[]", "text", "float8",
                "float8", "text", "jsonb", "jsonb"]
INSERT_EVENTS = f"""
    INSERT INTO events ({EVENT_COLUMNS})
    SELECT DISTINCT ON (s.source_id, s.msg_id) {', '.join('s.' + c.strip() for c in EVENT_COLUMNS.split(','))}
    FROM _ingest_events s
    WHERE NOT EXISTS (SELECT 1 FROM events e
                      WHERE e.source_id = s.source_id AND e.msg_id = s.msg_id
                        AND e.time > s.time - INTERVAL '{DEDUPE_WINDOW}')
    ORDER BY s.source_id, s.msg_id, s.time
    RETURNING id
"""
COPY_DEAD = "COPY dead_letters (time, topic, payload, reason, qos, retained) FROM STDIN (FORMAT BINARY)"
TYPES_DEAD = ["timestamptz", "text", "bytea", "text", "int2", "bool"]


def _json_passthrough(obj) -> str:
    # The rows carry JSON already serialised by pydantic; anything else is dumped here.
    return obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)


class _JsonbTextDumper(Dumper):
    """jsonb in binary COPY from JSON text as the rows carry it: the version byte and the
    text, without psycopg's generic JSON dumper around it (a few Python calls per row)."""

    format = Format.BINARY
    oid = postgres.types["jsonb"].oid

    def dump(self, obj) -> bytes:
        return b"\x01" + (obj if type(obj) is str else _json_passthrough(obj)).encode()


class _JsonbText(str):
    """Never instantiated: registering the dumper needs a Python type; the COPYs pick it
    by the jsonb oid (set_types)."""


def open_writer_connection(url: str) -> psycopg.Connection:
    conn = psycopg.connect(url, connect_timeout=5, application_name="xlhub-ingest")
    set_json_dumps(_json_passthrough, context=conn)
    conn.adapters.register_dumper(_JsonbText, _JsonbTextDumper)
    conn.execute("SET synchronous_commit = on")
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS _ingest_events (LIKE events) ON COMMIT DELETE ROWS")
    conn.commit()
    return conn


@dataclass
class WriteResult:
    telemetry: int = 0
    positions: int = 0
    camera_health: int = 0
    events: int = 0
    events_duplicate: int = 0
    dead_letters: int = 0
    event_ids: list[str] = field(default_factory=list)


def _copy(cur: psycopg.Cursor, sql: str, types: list[str], rows: list[tuple]) -> None:
    if not rows:
        return
    with cur.copy(sql) as copy:
        copy.set_types(types)
        write = copy.write_row
        for row in rows:
            write(row)


def write_prepared(conn: psycopg.Connection, p: Prepared) -> WriteResult:
    """Write one prepared batch in one transaction and commit it. Raises on any database
    error (after rolling back)."""
    res = WriteResult()
    try:
        with conn.cursor() as cur:
            _copy(cur, COPY_TELEMETRY, TYPES_TELEMETRY, p.telemetry)
            _copy(cur, COPY_POSITIONS, TYPES_POSITIONS, p.positions)
            _copy(cur, COPY_CAMERA, TYPES_CAMERA, p.camera_health)
            _copy(cur, COPY_DEAD, TYPES_DEAD, p.dead)
            if p.events:
                _copy(cur, COPY_EVENTS, TYPES_EVENTS, p.events)
                cur.execute(INSERT_EVENTS)
                res.event_ids = [r[0] for r in cur.fetchall()]
                if res.event_ids:
                    ids = res.event_ids
                    note = {"count": len(ids), "ids": ids[:200]}
                    cur.execute("SELECT pg_notify('xlhub_events', %s)", (json.dumps(note),))
        conn.commit()
    except BaseException:
        try:
            conn.rollback()
        except Exception:
            pass
        raise
    res.telemetry, res.positions, res.camera_health = len(p.telemetry), len(p.positions), len(p.camera_health)
    res.events = len(res.event_ids)
    res.events_duplicate = len(p.events) - res.events
    res.dead_letters = len(p.dead)
    return res


def is_connection_error(exc: BaseException) -> bool:
    """A lost or unreachable database (retry the same batch later) as opposed to data the
    database refuses (dead-letter it)."""
    if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
        return True
    return False


def write_one_by_one(conn: psycopg.Connection, items: list[Item], registry: SourceCache) -> WriteResult:
    """Fallback when the database refused a whole batch: store each message on its own,
    dead-lettering the ones it still refuses (with the database's reason)."""
    total = WriteResult()
    for item in items:
        p = prepare([item], registry)
        try:
            r = write_prepared(conn, p)
        except Exception as exc:
            if is_connection_error(exc):
                raise
            reason = f"database refused: {type(exc).__name__}: {str(exc).strip()[:500]}"
            r = write_prepared(conn, Prepared(dead=[_dead(item, reason)]))
        for name in ("telemetry", "positions", "camera_health", "events", "events_duplicate", "dead_letters"):
            setattr(total, name, getattr(total, name) + getattr(r, name))
        total.event_ids += r.event_ids
    return total
