"""What the hub shows an upper platform (级联): the shared subtrees of the grid tree as GB/T
28181-2016 business groups (215) and virtual organisations (216), and the cameras in them
(RTSP, ONVIF and GB/T 28181 ones alike) as video channels, each with a stable 20-digit ID.

ID rule (stored in ``gb_cascade_ids``, migration 0027; given once, never reused or changed):

    <the hub's SIP domain, 10 digits><type code, 3><network 0><sequence, 6 digits>

- type 215 (业务分组) for each shared subtree's root, 216 (虚拟组织) for the nodes below it,
  132 (网络摄像机) for an RTSP/ONVIF camera; the sequence counts per type code from 1 in the
  order the hub first shows the item;
- a GB/T 28181 camera (origin ``gb28181``) keeps its own channel ID (already unique by the
  standard), so the upper platform sees the same ID the device announced.

A node of the tree that becomes a shared root later keeps its ID (216) — only its type in the
table says which code it was given; the ID is what the upper platform stores."""
from __future__ import annotations

from dataclasses import dataclass

from cameras.gb28181 import manscdp
from config.gb28181 import GbUpstream

BUSINESS_GROUP, VIRTUAL_ORG, CAMERA = "215", "216", "132"


@dataclass(frozen=True)
class CatalogItem:
    gb_id: str
    name: str
    type_code: str                     # 215 | 216 | 131/132
    parent_id: str | None              # None: the business group itself
    business_group: str | None
    camera_id: str | None = None       # the hub's camera id (video channels)
    url: str | None = None             # the registry's stream URL (gb28181://… for GB cameras)
    lat: float | None = None
    lon: float | None = None


def gb_id_for(conn, domain: str, kind: str, key: str, type_code: str) -> str:
    """The stable ID of a grid node or camera (given now when it has none). In the caller's
    connection; concurrent callers are serialised by an advisory lock."""
    row = conn.execute("SELECT gb_id FROM gb_cascade_ids WHERE kind = %s AND key = %s", (kind, key)).fetchone()
    if row is not None:
        return row["gb_id"] if isinstance(row, dict) else row[0]
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(28181031)")
        row = conn.execute("SELECT gb_id FROM gb_cascade_ids WHERE kind = %s AND key = %s", (kind, key)).fetchone()
        if row is not None:
            return row["gb_id"] if isinstance(row, dict) else row[0]
        seq_row = conn.execute("SELECT coalesce(max(seq), 0) + 1 AS n FROM gb_cascade_ids WHERE type_code = %s",
                               (type_code,)).fetchone()
        seq = seq_row["n"] if isinstance(seq_row, dict) else seq_row[0]
        if seq > 999_999:
            raise RuntimeError(f"no GB/T 28181 ID left for type {type_code} (999999 given)")
        gb_id = f"{domain}{type_code}0{seq:06d}"
        conn.execute("INSERT INTO gb_cascade_ids (kind, key, type_code, seq, gb_id) VALUES (%s, %s, %s, %s, %s)",
                     (kind, key, type_code, seq, gb_id))
        return gb_id


def shared_catalog(conn, domain: str, up: GbUpstream) -> list[CatalogItem]:
    """Grid nodes of the shared subtrees (parents first) and their active cameras."""
    nodes = conn.execute("SELECT code, name, parent_code, path FROM grid_nodes WHERE retired_at IS NULL "
                         "AND path && %s::text[] ORDER BY array_length(path, 1), code", (list(up.share),)).fetchall()
    items: list[CatalogItem] = []
    ids: dict[str, str] = {}
    group_of: dict[str, str] = {}
    shared = set(up.share)
    for n in nodes:
        # the top-most shared ancestor is this node's business group
        root = next(code for code in n["path"] if code in shared)
        if n["code"] == root:
            gid = gb_id_for(conn, domain, "grid", n["code"], BUSINESS_GROUP)
            ids[n["code"]] = group_of[n["code"]] = gid
            items.append(CatalogItem(gid, n["name"], BUSINESS_GROUP, None, None))
            continue
        vid = gb_id_for(conn, domain, "grid", n["code"], VIRTUAL_ORG)
        ids[n["code"]] = vid
        group_of[n["code"]] = group_of[root]
        items.append(CatalogItem(vid, n["name"], VIRTUAL_ORG, ids.get(n["parent_code"], group_of[root]),
                                 group_of[root]))
    cams = conn.execute(
        """SELECT c.id, c.name, c.rtsp_url, c.origin, c.lat, c.lon, g.grid_code FROM cameras c
           JOIN source_grid g ON g.source_kind = 'camera' AND g.source_id = c.id
           WHERE c.active AND c.retired_at IS NULL AND g.grid_code = ANY(%s) ORDER BY c.id""",
        (list(ids),)).fetchall()
    for c in cams:
        gb_id = _own_gb_id(c) or gb_id_for(conn, domain, "camera", c["id"], CAMERA)
        items.append(CatalogItem(gb_id, c["name"], gb_id[10:13], ids[c["grid_code"]], group_of[c["grid_code"]],
                                 camera_id=c["id"], url=c["rtsp_url"], lat=c["lat"], lon=c["lon"]))
    return items


def _own_gb_id(row) -> str | None:
    url = row["rtsp_url"] or ""
    if row["origin"] == "gb28181" and url.startswith("gb28181://"):
        channel = url.rsplit("/", 1)[-1]
        if manscdp.is_gb_id(channel):
            return channel
    return None


def catalog_bodies(items: list[CatalogItem], *, sn: int, hub_id: str, civil_code: str, label: str,
                   per_packet: int = 4) -> list[bytes]:
    """The Catalog response packets (SumNum the whole count, ``per_packet`` items each, GB/T
    28181 §A.2.6.4), encoded in ``label`` (the upper platform's own encoding)."""
    out = []
    chunks = [items[i:i + per_packet] for i in range(0, len(items), per_packet)] or [[]]
    for chunk in chunks:
        parts = [manscdp.el("CmdType", "Catalog"), manscdp.el("SN", sn), manscdp.el("DeviceID", hub_id),
                 manscdp.el("SumNum", len(items)), f'<DeviceList Num="{len(chunk)}">\r\n']
        for it in chunk:
            parts.append("<Item>\r\n" + manscdp.el("DeviceID", it.gb_id) + manscdp.el("Name", it.name))
            if it.type_code in (BUSINESS_GROUP, VIRTUAL_ORG):
                if it.type_code == VIRTUAL_ORG:
                    parts.append(manscdp.el("ParentID", it.parent_id) + manscdp.el("BusinessGroupID", it.business_group))
            else:
                parts.append(manscdp.el("Manufacturer", "Xueliang Hub") + manscdp.el("Model", "cascade")
                             + manscdp.el("Owner", "Owner") + manscdp.el("CivilCode", civil_code)
                             + manscdp.el("Address", "") + manscdp.el("Parental", 0)
                             + manscdp.el("ParentID", it.parent_id)
                             + manscdp.el("BusinessGroupID", it.business_group)
                             + manscdp.el("SafetyWay", 0) + manscdp.el("RegisterWay", 1) + manscdp.el("Secrecy", 0)
                             + manscdp.el("Status", "ON")
                             + (manscdp.el("Longitude", it.lon) + manscdp.el("Latitude", it.lat)
                                if it.lat is not None and it.lon is not None else ""))
            parts.append("</Item>\r\n")
        parts.append("</DeviceList>\r\n")
        out.append(manscdp.encode("Response", "".join(parts), label))
    return out
