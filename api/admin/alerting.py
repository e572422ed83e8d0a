"""Alerting rules and SLA limits (告警规则与办结时限) edited in the UI, applied live: the
registry keeps the sections as the site file writes them (store/sitedoc.py), each change is
checked by the site file's own checks with the rest of the site (api/admin/checks.py), the
alerts worker reloads on ``xlhub_alerting`` (a trigger on site_sections), and the change is
audited with before and after. They apply county-wide: only the county's administrators
edit them."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Request, status
from pydantic import BaseModel, ConfigDict, Field

from api.admin.checks import checked, site_base
from api.audit import entry_for
from api.deps import Conn, require
from api.permissions import Permission
from store import audit, sitedoc
from store.identity import Principal

router = APIRouter(prefix="/api/admin", tags=["admin 管理"])

Section = Literal["rules", "schedules", "arming", "sla"]


class AlertingConfig(BaseModel):
    rules: list[Any] = Field(description="告警规则, as the site file's rules: section")
    schedules: dict[str, Any]
    arming: list[Any]
    sla: dict[str, Any] = Field(description="办结时限: warn_at, default, limits (as the site file's sla: section)")
    edited_in_ui: list[str] = Field(description="sections the registry holds (edited in the UI or applied from the "
                                                "site file); the others are the site file's")


class SectionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data: list[Any] | dict[str, Any] = Field(description="the section, as in the site file")


def _current(request: Request, conn) -> tuple[dict[str, Any], list[str]]:
    stored = sitedoc.sections(conn)
    base = site_base(request)
    out = {name: stored[name] if name in stored else (base.get(name) or empty)
           for name, empty in sitedoc.SECTIONS.items()}
    return out, sorted(stored)


@router.get("/alerting", response_model=AlertingConfig)
def get_alerting(request: Request, conn: Conn,
                 principal: Annotated[Principal, Depends(require(Permission.ALERTING_READ))]) -> AlertingConfig:
    current, stored = _current(request, conn)
    return AlertingConfig(**current, edited_in_ui=stored)


@router.put("/alerting/{section}", response_model=AlertingConfig)
def put_alerting(section: Section, body: SectionBody, request: Request, conn: Conn,
                 principal: Annotated[Principal, Depends(require(Permission.ALERTING_MANAGE))]) -> AlertingConfig:
    """Replace one section (rules, schedules, arming or sla) after checking it with the
    rest of the site; the alerts worker applies it within a second."""
    if len(principal.node_path) != 1:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "告警规则与办结时限全县通用，只有县级管理员可以修改")
    if section in ("rules", "arming") and not isinstance(body.data, list):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"字段 {section}：必须是列表")
    if section in ("schedules", "sla") and not isinstance(body.data, dict):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"字段 {section}：必须是键值对象")
    current, _ = _current(request, conn)

    checked(request, conn, lambda doc: doc.__setitem__(section, body.data))
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('xlhub_site_sections'))")
    sitedoc.put_section(conn, section, body.data, principal.name)
    request.state.audited = True
    audit.record(conn, entry_for(request, f"alerting.{section}.update", "ok", target=section,
                                 detail={"before": current[section], "after": body.data}))
    current[section] = body.data
    return AlertingConfig(**current, edited_in_ui=sorted(sitedoc.sections(conn)))
