"""导出录像 from the playback page in Debian's chromium (issue 13: exports are durable jobs):
the dialog shows the job's progress while the hub writes it (read slowly here, so progress is
seen), then the SHA-256 and the download link; the file downloaded by the page's own session
is the one the SHA-256 names. Set-up (a real camera worker recording the simulator) is
test_playback's ``recording`` fixture, shared rather than copied."""
from __future__ import annotations


import pytest

from store.db import connect
from tests.web.test_playback import CAM, recording  # noqa: F401  (the shared fixture)

pytestmark = pytest.mark.timeout(240)

SET_RANGE = """([s, e]) => {
  const pad = (n) => String(n).padStart(2, '0');
  const f = (ms) => { const d = new Date(ms); return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`
    + `T${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`; };
  document.querySelector('#export-start').value = f(s);
  document.querySelector('#export-end').value = f(e);
}"""

SHA256_OF_DOWNLOAD = """async () => {
  const href = document.querySelector('#export-download').getAttribute('href');
  const r = await fetch(href, { credentials: 'same-origin' });
  const digest = await crypto.subtle.digest('SHA-256', await r.arrayBuffer());
  return { status: r.status, sha: [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, '0')).join('') };
}"""


def test_the_page_shows_the_exports_progress_then_offers_the_download(recording, ui_for, live_db,  # noqa: F811
                                                                       tmp_path, shots):
    rows = recording
    mp = pytest.MonkeyPatch()
    mp.setenv("XLHUB_RECORDING_EXPORT_DIR", str(tmp_path / "exports"))
    mp.setenv("XLHUB_RECORDING_EXPORT_RATE", "40000")     # bytes/s: a few seconds of progress to watch
    try:
        ui = ui_for("lead")
        p = ui.page
        p.click("#nav-playback")
        p.wait_for_selector("#pb-timeline[data-marks]", timeout=15000)
        p.select_option("#pb-camera", CAM)
        p.wait_for_selector("#pb-timeline .pb-span", timeout=15000)
        p.click("#pb-export")
        p.wait_for_selector("#export-form")
        start = rows[0]["start_at"].timestamp() * 1000 + 1000
        end = rows[-1]["end_at"].timestamp() * 1000
        p.evaluate(SET_RANGE, [start, end])
        p.fill("#export-reason", "派出所调取：案件 2026-140")
        p.click("#export-submit")
        p.wait_for_function("(() => { const v = Number(document.querySelector('#export-result').dataset.progress);"
                            " return v > 0 && v < 1; })()", timeout=30000)
        shown = p.text_content("#export-result")
        assert "导出中" in shown and "MB" in shown and "null" not in shown and p.query_selector("#export-progress")
        p.screenshot(path=str(shots / "32-playback-export-progress.png"))
        p.wait_for_selector("#export-download", timeout=60000)
        assert p.get_attribute("#export-result", "data-outcome") == "ok"
        sha = p.text_content("#export-sha256")
        assert "null" not in p.text_content("#export-result")
        got = p.evaluate(SHA256_OF_DOWNLOAD)
        p.screenshot(path=str(shots / "33-playback-export-done.png"))
        export_id = p.get_attribute("#export-result", "data-export-id")
    finally:
        mp.undo()
    assert got == {"status": 200, "sha": sha}, "the page's download is the file its SHA-256 names"
    with connect(live_db) as conn:
        job = conn.execute("SELECT * FROM recording_exports WHERE id = %s", (export_id,)).fetchone()
        downloads = conn.execute("SELECT actor, detail FROM audit_log WHERE action = 'recordings.export.download' "
                                 "AND detail->>'export_id' = %s", (export_id,)).fetchall()
    assert job["state"] == "done" and job["sha256"] == sha and job["requested_by"] == "lead"
    assert [(d["actor"], d["detail"]["reason"]) for d in downloads] == [("lead", "派出所调取：案件 2026-140")]
    assert (job["finished_at"] - job["started_at"]).total_seconds() > 1, "progress was there to be seen"
    assert not ui.errors, ui.errors
