"""Refused device credentials on the devices' own HTTP endpoints (issue 18): each refusal is
an audit record (``device.auth``, denied) in the grid node of the device it claimed to be —
so that node's administrators read it — or of the county's root when no such device
exists; a burst of them on one claimed device, or from one address across device ids, is a
``security.device.refused`` event in that node, which the alerts engine raises an alarm
for. The answer to the device is the same in every case (uploads.py): only the record says
whether the device exists."""
from __future__ import annotations

import dataclasses
import logging

import psycopg
from fastapi import Request

from api.audit import entry_for
from api.deps import client_ip
from store import audit
from store.security import DEVICE_REFUSED, BurstCounter, raise_event

log = logging.getLogger(__name__)

ACTION = "device.auth"
WRONG_PASSWORD = "密码错误"
NO_SUCH_DEVICE = "无此设备"


def counter(request: Request) -> BurstCounter:
    """The API process's count of refusals per claimed device and per address."""
    return request.app.state.device_refusals


def _claimed(device_id: str | None) -> str | None:
    # what a client claims is text of its choosing: no NUL (PostgreSQL refuses it), bounded
    return device_id.replace("\x00", "\ufffd")[:128] if device_id is not None else None


def _device(conn: psycopg.Connection, device_id: str) -> tuple[bool, str | None]:
    """(whether the device is registered, its current grid node)."""
    row = conn.execute("""SELECT d.id, g.grid_code FROM devices d
                          LEFT JOIN source_grid g ON g.source_kind = 'device' AND g.source_id = d.id
                          WHERE d.id = %s""", (device_id,)).fetchone()
    return (True, row["grid_code"]) if row else (False, None)


def refuse(request: Request, conn: psycopg.Connection, device_id: str | None, reason: str | None, *,
           counted: bool = True) -> None:
    """Record one refusal (and a burst's event) and commit it before the 401 is raised.
    ``reason`` None: the password did not match — wrong, or no such device, as the registry
    says. ``counted`` False: no credentials were offered at all (not a guess)."""
    claimed = _claimed(device_id)
    address = client_ip(request)
    try:
        exists, node = _device(conn, claimed) if claimed else (False, None)
        if reason is None:
            reason = WRONG_PASSWORD if exists else NO_SUCH_DEVICE
        entry = entry_for(request, ACTION, "denied", target=claimed,
                          detail={"reason": reason, "path": request.url.path, "method": request.method})
        audit.record(conn, dataclasses.replace(entry, node_code=node))
        if counted:
            _count(request, conn, claimed, address, node)
        conn.commit()
    except psycopg.Error:
        # the 401 stands; the audit middleware still tries its generic record
        log.exception("refused device credentials could not be recorded (%s from %s)", claimed, address)
        conn.rollback()
        return
    request.state.audited = True


def _count(request: Request, conn: psycopg.Connection, claimed: str | None, address: str | None,
           node: str | None) -> None:
    bursts = counter(request)
    by_device = bursts.hit(f"device:{claimed}") if claimed else None
    by_address = bursts.hit(f"address:{address}") if address else None
    if not (by_device or by_address):
        return
    # one event for this refusal even when both became a burst with it: the device's
    subject, by, refusals = (claimed, "device", by_device) if by_device else (address, "address", by_address)
    raise_event(conn, DEVICE_REFUSED, subject=subject, node_code=node,
                payload={"by": by, "device_id": claimed, "address": address, "refusals": refusals,
                         "window_s": bursts.window_s})
    log.warning("burst of refused device credentials (%s %s, %d within %.0fs)", by, subject, refusals,
                bursts.window_s)
