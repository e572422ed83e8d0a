"""The registry follows the site file; grid membership is versioned, not overwritten."""
from __future__ import annotations

import time
from datetime import datetime, timezone

import yaml

from config.settings import DEMO_SITE_FILE
from config.site import load_site
from store.db import connect
from store.registry import grid_at, sync_site
from tests.conftest import create_database


def test_sync_is_idempotent_and_creates_site_users(pg, demo_site, monkeypatch):
    url = create_database(pg)
    for user in demo_site.users:
        monkeypatch.delenv(user.password_env, raising=False)
    with connect(url) as conn:
        first = sync_site(conn, demo_site)
        second = sync_site(conn, demo_site)
        counts = conn.execute("""SELECT (SELECT count(*) FROM grid_nodes) AS nodes, (SELECT count(*) FROM cameras) AS cams,
                                        (SELECT count(*) FROM devices) AS devs, (SELECT count(*) FROM grid_membership) AS ms,
                                        (SELECT count(*) FROM users WHERE must_change_password) AS fresh""").fetchone()
    assert first.nodes == second.nodes == len(list(demo_site.nodes()))
    assert len(first.created_users) == len(demo_site.users) and second.created_users == []
    # generated passwords are printed once and must be changed at first login
    assert all(pw for _, pw in first.created_users) and counts["fresh"] == len(demo_site.users)
    assert second.moved == []
    assert counts["ms"] == len(demo_site.cameras) + len(demo_site.devices)


def test_moving_a_camera_keeps_its_history(pg, tmp_path):
    url = create_database(pg)
    data = yaml.safe_load(DEMO_SITE_FILE.read_text())
    site = load_site(DEMO_SITE_FILE)
    cam = data["cameras"][0]
    old_grid = cam["grid"]
    new_grid = next(code for code in site.subtree_codes(site.grid.code)
                    if site.node(code).level == "grid" and code != old_grid)
    with connect(url) as conn:
        sync_site(conn, site)
        conn.commit()
        time.sleep(0.05)
        before_move = datetime.now(timezone.utc)
        time.sleep(0.05)
        cam["grid"] = new_grid
        moved_file = tmp_path / "site.yaml"
        moved_file.write_text(yaml.safe_dump(data, allow_unicode=True))
        report = sync_site(conn, load_site(moved_file))
        conn.commit()
        assert report.moved == [(cam["id"], old_grid, new_grid)]
        assert grid_at(conn, cam["id"], before_move) == old_grid
        assert grid_at(conn, cam["id"]) == new_grid
        history = conn.execute("SELECT grid_code, valid_to FROM grid_membership WHERE source_id = %s ORDER BY valid_from",
                               (cam["id"],)).fetchall()
    assert [h["grid_code"] for h in history] == [old_grid, new_grid]
    assert history[0]["valid_to"] is not None and history[1]["valid_to"] is None


def test_a_grid_dropped_from_the_site_file_is_retired_not_deleted(pg, tmp_path):
    url = create_database(pg)
    data = yaml.safe_load(DEMO_SITE_FILE.read_text())
    village = data["grid"]["children"][0]["children"][0]
    extra = {"code": village["code"] + "999", "name": "临时网格", "level": "grid"}
    village["children"].append(extra)
    larger, smaller = tmp_path / "larger.yaml", tmp_path / "smaller.yaml"
    larger.write_text(yaml.safe_dump(data, allow_unicode=True))
    village["children"].pop()
    smaller.write_text(yaml.safe_dump(data, allow_unicode=True))
    with connect(url) as conn:
        sync_site(conn, load_site(larger))
        report = sync_site(conn, load_site(smaller))
        row = conn.execute("SELECT retired_at FROM grid_nodes WHERE code = %s", (extra["code"],)).fetchone()
    assert report.retired_nodes == [extra["code"]]
    assert row is not None and row["retired_at"] is not None


def test_a_device_dropped_from_the_site_file_is_deactivated_not_deleted(pg, tmp_path):
    url = create_database(pg)
    data = yaml.safe_load(DEMO_SITE_FILE.read_text())
    dropped = data["devices"].pop()
    smaller = tmp_path / "smaller.yaml"
    smaller.write_text(yaml.safe_dump(data, allow_unicode=True))
    with connect(url) as conn:
        sync_site(conn, load_site(DEMO_SITE_FILE))
        report = sync_site(conn, load_site(smaller))
        row = conn.execute("SELECT active FROM devices WHERE id = %s", (dropped["id"],)).fetchone()
        again = sync_site(conn, load_site(DEMO_SITE_FILE))
        back = conn.execute("SELECT active FROM devices WHERE id = %s", (dropped["id"],)).fetchone()
    assert report.deactivated == [dropped["id"]] and row["active"] is False
    assert again.deactivated == [] and back["active"] is True
