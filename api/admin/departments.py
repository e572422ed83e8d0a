"""Administration of departments (部门管理, 职能部门): list, create, edit, retire — within the
caller's subtree (a department sits at a grid node), checked by the site file's own checks
(api/admin/checks.py), audited with before and after."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, status
from pydantic import BaseModel, ConfigDict, Field

from api.admin.checks import checked
from api.audit import entry_for
from api.deps import Conn, in_scope, require
from api.permissions import Permission
from store import audit
from store.identity import Principal
from store.registry import node_path

router = APIRouter(prefix="/api/admin", tags=["admin 管理"])
Manager = Annotated[Principal, Depends(require(Permission.DEPARTMENTS_MANAGE))]


class DepartmentAdmin(BaseModel):
    code: str
    name: str
    node_code: str
    node_name: str
    origin: str
    retired: bool
    users: int = Field(description="active accounts of the department")


class NewDepartment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=200)
    node_code: str = Field(min_length=1, max_length=64)


class DepartmentChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, min_length=1, max_length=200)
    node_code: str | None = Field(None, min_length=1, max_length=64)


QUERY = """
SELECT d.code, d.name, d.node_code, g.name AS node_name, g.path, d.origin, d.retired_at IS NOT NULL AS retired,
       (SELECT count(*) FROM users u WHERE u.department_code = d.code AND u.active) AS users
FROM departments d JOIN grid_nodes g ON g.code = d.node_code
"""


def _department(conn, principal: Principal, code: str) -> dict:
    row = conn.execute(QUERY + " WHERE d.code = %s FOR UPDATE OF d", (code,)).fetchone()
    if row is None or not in_scope(principal, row["path"]):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "部门不存在 (department not found)")
    return row


def _node_in_scope(conn, principal: Principal, code: str) -> None:
    if not in_scope(principal, node_path(conn, code)):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"网格节点 {code} 不存在（node_code）")


def _shown(row: dict) -> dict:
    return {k: row[k] for k in ("code", "name", "node_code", "retired")}


def _audit(request: Request, conn, action: str, code: str, before, after) -> None:
    request.state.audited = True
    audit.record(conn, entry_for(request, action, "ok", target=code, detail={"before": before, "after": after}))


@router.get("/departments", response_model=list[DepartmentAdmin])
def list_departments(conn: Conn, principal: Manager, retired: bool = False) -> list[DepartmentAdmin]:
    rows = conn.execute(QUERY + " WHERE g.path @> ARRAY[%s]" + ("" if retired else " AND d.retired_at IS NULL")
                        + " ORDER BY g.path, d.code", (principal.node_code,)).fetchall()
    return [DepartmentAdmin(**r) for r in rows]


@router.post("/departments", response_model=DepartmentAdmin, status_code=status.HTTP_201_CREATED)
def create_department(body: NewDepartment, request: Request, conn: Conn, principal: Manager) -> DepartmentAdmin:
    _node_in_scope(conn, principal, body.node_code)
    if conn.execute("SELECT 1 FROM departments WHERE code = %s", (body.code,)).fetchone():
        raise HTTPException(status.HTTP_409_CONFLICT, f"部门编码 {body.code} 已被使用（code）")
    checked(request, conn, lambda doc: doc.setdefault("departments", []).append(
        {"code": body.code, "name": body.name, "node": body.node_code}))
    conn.execute("INSERT INTO departments (code, name, node_code, origin) VALUES (%s, %s, %s, 'api')",
                 (body.code, body.name, body.node_code))
    row = _department(conn, principal, body.code)
    _audit(request, conn, "department.create", body.code, None, _shown(row))
    return DepartmentAdmin(**row)


@router.patch("/departments/{code}", response_model=DepartmentAdmin)
def update_department(code: str, body: DepartmentChange, request: Request, conn: Conn,
                      principal: Manager) -> DepartmentAdmin:
    row = _department(conn, principal, code)
    if row["retired"]:
        raise HTTPException(status.HTTP_409_CONFLICT, "该部门已撤销，不能修改")
    changes = {k: v for k, v in body.model_dump(include=body.model_fields_set).items() if v is not None}
    if not changes:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "没有要修改的内容")
    if "node_code" in changes:
        _node_in_scope(conn, principal, changes["node_code"])

    def change(doc: dict) -> None:
        dept = next(d for d in doc["departments"] if d["code"] == code)
        dept.update({"name": changes.get("name", dept["name"]), "node": changes.get("node_code", dept["node"])})
    checked(request, conn, change)
    conn.execute("UPDATE departments SET name = %s, node_code = %s WHERE code = %s",
                 (changes.get("name", row["name"]), changes.get("node_code", row["node_code"]), code))
    after = _department(conn, principal, code)
    _audit(request, conn, "department.update", code, _shown(row), _shown(after))
    return DepartmentAdmin(**after)


@router.post("/departments/{code}/retire", response_model=DepartmentAdmin)
def retire_department(code: str, request: Request, conn: Conn, principal: Manager) -> DepartmentAdmin:
    """Retire (撤销) a department: kept for the cases it handled; refused while accounts use it."""
    row = _department(conn, principal, code)
    if row["retired"]:
        return DepartmentAdmin(**row)
    if row["users"]:
        raise HTTPException(status.HTTP_409_CONFLICT, f"不能撤销部门 {row['name']}：仍有 {row['users']} 个在用帐号属于该部门，"
                                                      "请先调整或停用这些帐号")
    checked(request, conn, lambda doc: doc.__setitem__(
        "departments", [d for d in doc["departments"] if d["code"] != code]))
    conn.execute("UPDATE departments SET retired_at = now() WHERE code = %s", (code,))
    after = _department(conn, principal, code)
    _audit(request, conn, "department.retire", code, _shown(row), _shown(after))
    return DepartmentAdmin(**after)
