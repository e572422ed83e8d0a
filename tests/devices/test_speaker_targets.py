"""Which speakers a broadcast reaches (devices/registry.speakers_under), on the demo site's
grid tree in a real database: a speaker hung on a village node sounds in each of the
village's grids, so a warning matched to one grid (issue 16: CAP areas are matched down to
grids) reaches it — and a grid of another village does not."""
from __future__ import annotations

from devices.registry import speakers_under
from store.db import connect


def test_a_village_speaker_is_reached_by_a_broadcast_to_one_of_its_grids(site_db):
    with connect(site_db) as conn:
        grids = conn.execute(
            """SELECT g.code, g.parent_code FROM grid_nodes g JOIN grid_nodes v ON v.code = g.parent_code
               WHERE g.level = 'grid' AND v.level IN ('village', 'community') ORDER BY g.code""").fetchall()
        villages = list(dict.fromkeys(r["parent_code"] for r in grids))
        assert len(villages) >= 2, "the demo has grids in at least two villages"
        grid = next(r["code"] for r in grids if r["parent_code"] == villages[0])
        other = next(r["code"] for r in grids if r["parent_code"] == villages[1])
        conn.execute("INSERT INTO devices (id, kind, name) VALUES ('spk-village-node', 'speaker', '村委会大喇叭')")
        conn.execute("INSERT INTO grid_membership (source_kind, source_id, grid_code, valid_from) "
                     "VALUES ('device', 'spk-village-node', %s, now() - interval '1 day')", (villages[0],))
        reached = {s.id: s for s in speakers_under(conn, [grid])}
        elsewhere = {s.id for s in speakers_under(conn, [other])}
        conn.rollback()
    assert "spk-village-node" in reached and reached["spk-village-node"].village_code == villages[0]
    assert "spk-village-node" not in elsewhere
