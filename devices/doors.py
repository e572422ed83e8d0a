"""Doors (门禁): after an outage the devices worker asks the controller to replay its
buffered events (``cmd/replay_events`` since the last seq the hub saw), so none are
missing; ingest dedupes what it already had.

An outage is a door coming back online: by its own ``avail`` (even online → online, it
reconnected before anyone noticed and may have buffered events), or by a message after
the hub had decided it offline. The request is a command queued like any other
(devices/commands/, a system requester) in the transaction that stored the
transition, and published by the worker with the other pending ones."""
from __future__ import annotations

from bus.commands import ReplayEventsCommand
from devices.availability import Transition
from devices.commands import service as commands
from devices.commands.model import Requester
from devices.settings import DevicesSettings

SYSTEM = Requester.system("devices")


def replay_after(conn, t: Transition, cfg: DevicesSettings) -> bool:
    """Request a replay if ``t`` ends a door's outage; whether it did."""
    if (t.kind == "door" and t.status == "online" and cfg.replay_on_reconnect
            and t.seq_before is not None and (t.reason == "avail" or t.previous == "offline")):
        request_replay(conn, t.device_id, t.seq_before, cfg)
        return True
    return False


def request_replay(conn, device_id: str, since_seq: int, cfg: DevicesSettings) -> None:
    """After an outage: everything the controller buffered since the last seq we saw.
    Ingest drops what it already has ((device, message id) dedupe), so asking for a
    little too much is harmless and asking too little is not."""
    commands.create_command(conn, device_id=device_id, name=ReplayEventsCommand.name,
                            body=ReplayEventsCommand(since_seq=since_seq).content(),
                            requester=SYSTEM, timeout_s=max(30.0, cfg.command_timeout_s),
                            expiry_s=cfg.command_expiry_s)
