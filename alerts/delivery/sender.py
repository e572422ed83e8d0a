"""The webhook sender: delivers the outbox to the case systems.

- Claims due messages with ``FOR UPDATE SKIP LOCKED`` and a lease (a sender that dies
  mid-delivery leaves the message to be claimed again when the lease runs out), only the
  oldest undelivered message of each (target, case): order per case holds even with
  several senders.  It claims no more than it has workers, so every claimed message is
  being posted, and the lease is the longest case-system timeout plus ``LEASE_MARGIN_S``:
  a sender killed mid-delivery strands only the few messages it was posting, and only
  that long (a batch of 64 under a fixed 120 s lease held up to 64 cases for 2 minutes).
- POSTs the stored JSON with ``Idempotency-Key``, an HMAC-SHA256 signature over timestamp
  and body (alerts.delivery.signing) and the event name.
- 2xx: delivered.  Network errors, timeouts, 5xx, 408, 425 and 429: retried with
  exponential backoff from ``retry.first`` up to ``retry.max_interval`` (jittered) until
  ``retry.give_up_after`` has passed, then dead-lettered.  Other 4xx answers will not
  change by retrying: dead-lettered at once (replay once the receiver is fixed).
"""
from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

import httpx
from psycopg_pool import ConnectionPool

from alerts import feed
from alerts.config import AlertsConfig, SecretError
from alerts.delivery.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, signature

log = logging.getLogger(__name__)

RETRYABLE_4XX = {408, 425, 429}
LEASE_MARGIN_S = 30.0            # beyond the HTTP timeout: recording the result, a slow database

CLAIM = """
UPDATE outbox SET status = 'delivering', attempts = attempts + 1,
       lease_until = clock_timestamp() + make_interval(secs => %(lease)s)
WHERE id IN (
    SELECT o.id FROM outbox o
    WHERE ((o.status = 'pending' AND o.next_attempt_at <= clock_timestamp())
           OR (o.status = 'delivering' AND o.lease_until < clock_timestamp()))
      AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.target = o.target AND p.case_id = o.case_id
                      AND p.id < o.id AND p.status <> 'delivered')
    ORDER BY o.id LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED)
RETURNING id, target, case_id, seq, event, idempotency_key, payload, attempts, give_up_at
"""


@dataclass
class Result:
    ok: bool
    status: int | None = None
    error: str | None = None
    permanent: bool = False
    duration_ms: float = 0.0


def backoff(attempts: int, first: timedelta, max_interval: timedelta) -> timedelta:
    """Delay before the next try after ``attempts`` failed ones: doubling, capped, ±10 %."""
    base = min(first.total_seconds() * (2 ** max(0, attempts - 1)), max_interval.total_seconds())
    return timedelta(seconds=base * random.uniform(0.9, 1.1))


class WebhookSender:
    def __init__(self, pool: ConnectionPool, config: Callable[[], AlertsConfig], *, workers: int = 4,
                 batch: int | None = None, lease_s: float | None = None, user_agent: str = "xlhub-alerts/1") -> None:
        self.pool = pool
        self.config = config
        self.batch = batch or workers            # claimed = being posted (see the module's docstring)
        self.lease_s = lease_s                   # None: the longest timeout + LEASE_MARGIN_S
        self.user_agent = user_agent
        self.wake = threading.Event()
        # The longest sleep with nothing due; the alerts worker makes it long while its
        # listener hears the outbox's notifications, which wake the sender for new messages.
        self.max_idle_s = 1.0
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="webhook")
        self.clients: dict[tuple[str, float], httpx.Client] = {}
        self.stats = {"delivered": 0, "failed": 0, "dead": 0}
        self.on_delivered: Callable[[dict, float], None] | None = None    # benchmarks hook in here

    # -- loop ---------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                done = self.deliver_due()
            except Exception:
                log.exception("outbox delivery round failed")
                done = 0
                stop.wait(1.0)
            if done:
                continue                        # the next message of each case may be due now
            self.wake.wait(self._idle_wait())
            self.wake.clear()
        self.close()

    def _idle_wait(self) -> float:
        try:
            with self.pool.connection(timeout=5) as conn:
                row = conn.execute(
                    """SELECT extract(epoch FROM min(coalesce(CASE WHEN status = 'delivering' THEN lease_until END,
                                                              next_attempt_at)) - clock_timestamp()) AS s
                       FROM outbox WHERE status IN ('pending','delivering')""").fetchone()
        except Exception:
            return 1.0
        s = row["s"]
        return self.max_idle_s if s is None else max(0.01, min(self.max_idle_s, float(s)))

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
        for client in self.clients.values():
            client.close()
        self.clients.clear()

    # -- one round ------------------------------------------------------------------------
    def lease(self, cfg: AlertsConfig) -> float:
        if self.lease_s is not None:
            return self.lease_s
        timeouts = [s.timeout.total_seconds() for s in cfg.case_systems.values()]
        return max(timeouts, default=10.0) + LEASE_MARGIN_S

    def deliver_due(self) -> int:
        cfg = self.config()
        with self.pool.connection(timeout=10) as conn:
            rows = conn.execute(CLAIM, {"lease": self.lease(cfg), "limit": self.batch}).fetchall()
        if not rows:
            return 0
        futures = [self.executor.submit(self._deliver_one, cfg, row) for row in rows]
        for f in futures:
            f.result()
        return len(rows)

    def _client(self, timeout: float) -> httpx.Client:
        key = (threading.current_thread().name, timeout)
        client = self.clients.get(key)
        if client is None:
            client = self.clients[key] = httpx.Client(timeout=timeout, headers={"User-Agent": self.user_agent})
        return client

    def _deliver_one(self, cfg: AlertsConfig, row: dict) -> None:
        system = cfg.case_systems.get(row["target"])
        if system is None:
            result = Result(False, error=f"case system '{row['target']}' is no longer in the site file")
        else:
            result = self.post(cfg, system.name, str(system.url), system.timeout.total_seconds(), row)
        try:
            self._finish(cfg, row, result)
        except Exception:
            log.exception("could not record the delivery result of outbox message %s", row["id"])

    def post(self, cfg: AlertsConfig, target: str, url: str, timeout: float, row: dict) -> Result:
        body = json.dumps(row["payload"], ensure_ascii=False, separators=(",", ":")).encode()
        try:
            secret = cfg.secret(target)
        except SecretError as exc:
            return Result(False, error=str(exc))
        ts = int(time.time())
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Idempotency-Key": row["idempotency_key"],
            "X-Xlhub-Event": row["event"],
            "X-Xlhub-Delivery": str(row["id"]),
            "X-Xlhub-Case": row["case_id"],
            "X-Xlhub-Sequence": str(row["seq"]),
            TIMESTAMP_HEADER: str(ts),
            SIGNATURE_HEADER: signature(secret, ts, body),
        }
        started = time.perf_counter()
        try:
            response = self._client(timeout).post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return Result(False, error=f"{type(exc).__name__}: {str(exc)[:300]}",
                          duration_ms=(time.perf_counter() - started) * 1000)
        ms = (time.perf_counter() - started) * 1000
        code = response.status_code
        if 200 <= code < 300:
            return Result(True, code, duration_ms=ms)
        text = response.text[:300].replace("\n", " ")
        permanent = 400 <= code < 500 and code not in RETRYABLE_4XX
        return Result(False, code, f"HTTP {code}: {text}", permanent=permanent, duration_ms=ms)

    def _finish(self, cfg: AlertsConfig, row: dict, result: Result) -> None:
        with self.pool.connection(timeout=10) as conn:
            conn.execute("INSERT INTO outbox_attempts (outbox_id, status, error, duration_ms) VALUES (%s, %s, %s, %s)",
                         (row["id"], result.status, result.error, result.duration_ms))
            if result.ok:
                conn.execute(
                    """UPDATE outbox SET status = 'delivered', delivered_at = clock_timestamp(), lease_until = NULL,
                           last_status = %s, last_error = NULL WHERE id = %s""", (result.status, row["id"]))
                self.stats["delivered"] += 1
                if self.on_delivered is not None:
                    self.on_delivered(row, time.time())
                return
            # The claim query compares next_attempt_at with the database's clock, so the next
            # attempt is scheduled by that clock too (a hub on another machine may differ).
            now = conn.execute("SELECT clock_timestamp() AS now").fetchone()["now"]
            system = cfg.case_systems.get(row["target"])
            retry = system.retry if system else None
            delay = backoff(row["attempts"], retry.first, retry.max_interval) if retry else timedelta(minutes=5)
            if result.permanent or now + delay > row["give_up_at"]:
                conn.execute(
                    """UPDATE outbox SET status = 'dead', dead_at = clock_timestamp(), lease_until = NULL,
                           last_status = %s, last_error = %s WHERE id = %s""", (result.status, result.error, row["id"]))
                self.stats["dead"] += 1
                log.warning("outbox message %s to %s dead-lettered after %d attempts: %s", row["id"], row["target"],
                            row["attempts"], result.error)
                case = row["payload"].get("case") or {}
                feed.publish(conn, "delivery", str(row["id"]), "dead", case.get("grid_path") or [],
                             {"target": row["target"], "case_id": row["case_id"], "case_number": case.get("number"),
                              "error": (result.error or "")[:200]})
            else:
                conn.execute(
                    """UPDATE outbox SET status = 'pending', lease_until = NULL, last_status = %s, last_error = %s,
                           next_attempt_at = %s WHERE id = %s""", (result.status, result.error, now + delay, row["id"]))
                self.stats["failed"] += 1
                log.info("outbox message %s to %s failed (attempt %d, next in %.1fs): %s", row["id"], row["target"],
                         row["attempts"], delay.total_seconds(), result.error)
