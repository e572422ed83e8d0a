"""What devices answer to what the hub sent them, as the devices worker follows it: the
phases of a command (``res``; its id in the correlation data, or ``cmd_id``) until finished
| failed | rejected | preempted (devices/commands/), and the speakers' playback receipts
of a broadcast (``evt/playback``) until its report (devices/broadcast/). A command that
changed state (a device's answer or the hub's timeout) moves its broadcast's receipt, or,
on its own, leaves its outcome in the audit log. An answer after the hub's judgement is
kept all the same (late answers, devices/broadcast/service.py).

Everything here runs in the worker's transaction for the batch (or for the expiry sweep):
``touched`` are the broadcasts whose receipts moved in it, checked for completion once
before it commits (``complete_touched``) and forgotten if it does not commit."""
from __future__ import annotations

from datetime import UTC, datetime

from devices.broadcast import service as broadcasts
from devices.commands import service as commands
from devices.commands.model import FINAL


class Answers:
    """``stats``: the worker's counters (``phases``, ``receipts``, ``late_answers``)."""

    def __init__(self, stats: dict) -> None:
        self.stats = stats
        self.touched: set[str] = set()        # broadcasts whose receipts moved in the current transaction

    def on_result(self, conn, dev, correlation: bytes | None, body: dict, at: datetime) -> None:
        cmd_id = None
        if correlation:
            try:
                cmd_id = correlation.decode()
            except UnicodeDecodeError:
                cmd_id = None
        cmd_id = cmd_id or (body.get("cmd_id") if isinstance(body.get("cmd_id"), str) else None)
        phase = body.get("phase")
        if not cmd_id or not isinstance(phase, str):
            return
        detail = body.get("detail") if isinstance(body.get("detail"), str) else None
        pct = body.get("progress_pct") if isinstance(body.get("progress_pct"), (int, float)) else None
        cmd, changed = commands.apply_phase(conn, cmd_id, dev.id, phase, at, detail, pct)
        if cmd is None:
            return
        self.stats["phases"] += 1
        if changed:
            self.command_moved(conn, cmd, at)
        elif broadcasts.on_late_command_phase(conn, cmd, phase, at):
            self.stats["late_answers"] += 1

    def on_playback(self, conn, dev, body: dict, at: datetime) -> None:
        bid, phase = body.get("broadcast_id"), body.get("phase")
        if isinstance(bid, str) and isinstance(phase, str):
            detail = body.get("detail") if isinstance(body.get("detail"), str) else None
            b = broadcasts.on_playback(conn, bid, dev.id, phase, at, detail)
            if b:
                self.stats["receipts"] += 1
                self.touched.add(b)
            elif broadcasts.on_late_playback(conn, bid, dev.id, phase, at):
                self.stats["late_answers"] += 1

    def command_moved(self, conn, cmd: dict, at: datetime) -> None:
        """A command changed state (device answer or hub timeout)."""
        if cmd["broadcast_id"]:
            b = broadcasts.on_command_state(conn, cmd, at)
            if b:
                self.touched.add(b)
            return
        if cmd["state"] in FINAL:
            from store import audit
            audit.record(conn, audit.AuditEntry(
                actor="devices", actor_kind="system", action="device.command.outcome", target=cmd["device_id"],
                node_code=cmd["grid_code"], outcome="ok" if cmd["state"] == "finished" else "failed",
                detail={"command_id": cmd["id"], "name": cmd["name"], "state": cmd["state"],
                        "detail": cmd["detail"], "requested_by": cmd["requested_by"]}))

    def complete_touched(self, conn) -> None:
        """Broadcasts whose receipts moved in this transaction: reported once all are final
        (checked once per batch, not per receipt: a fan-out to 1,000 speakers answers 4,000 times)."""
        now = datetime.now(UTC)
        for b in sorted(self.touched):
            broadcasts.complete_if_done(conn, b, now)
        self.touched.clear()
