"""Benchmark: how long each page of the web UI takes to load, to network idle, in Debian's
chromium (Playwright), on a desk (1600×900) and on a phone (390×844, touch), against the API
as the hub runs it (``python -m hub.process api``, its own process) on an embedded
PostgreSQL with the demo site.

    .venv/bin/python bench/ui/run.py [--rounds 3] [--markdown]

Each page is opened as a fresh document (about:blank, then ``/#/<page>``: the shell, its
modules and the page's API calls), as a signed-in dispatcher (the control room's pages), a
grid worker (the phone's pages), the hotline seat and the administrator (the administration
pages): each signed-in user visits the pages its menu offers. "Network idle" is the end of the last request before
500 ms without any in flight (the alert feed's long-lived EventSource is not counted; the
500 ms of quiet are not in the figure). Baseline measured in the same run: the login page
(the shell alone, no session) — each page's time is also printed as a ratio of it.
Goal (issue 17): every page under 2 s to network idle. No camera worker runs: the wall's
tiles fall back to their offline state, as in a control room whose cameras are down.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench._hub import PASSWORD, demo_api  # noqa: E402

CHROMIUM = os.environ.get("XLHUB_CHROMIUM", "/usr/bin/chromium")
FORMS = {"desk 1600×900": {"viewport": {"width": 1600, "height": 900}},
         "phone 390×844": {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True,
                           "device_scale_factor": 2}}
QUIET_S = 0.5
LONG_LIVED = ("/api/alerts/feed",)


class Idle:
    """Requests in flight on a page, and when the last one ended."""

    def __init__(self, page):
        self.inflight: set = set()
        self.last_end = time.perf_counter()
        page.on("request", self.start)
        page.on("requestfinished", self.end)
        page.on("requestfailed", self.end)

    def start(self, req) -> None:
        if not any(p in req.url for p in LONG_LIVED):
            self.inflight.add(req)

    def end(self, req) -> None:
        if req in self.inflight:
            self.inflight.discard(req)
            self.last_end = time.perf_counter()

    def wait(self, page, timeout: float = 20.0) -> float:
        """The time the last request ended, once nothing has been in flight for QUIET_S."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            page.wait_for_timeout(50)
            now = time.perf_counter()
            if not self.inflight and now - self.last_end >= QUIET_S:
                return self.last_end
        raise TimeoutError(f"still {len(self.inflight)} request(s) in flight: {[r.url for r in self.inflight][:3]}")


def open_page(page, idle: Idle, base: str, pid: str | None, ready: str) -> float:
    page.goto("about:blank")
    idle.inflight.clear()
    t0 = time.perf_counter()
    page.goto(f"{base}/#/{pid}" if pid else f"{base}/")
    page.wait_for_selector(ready, timeout=20000)
    return idle.wait(page) - t0


def measure(browser, base: str, form: dict, user: str | None, rounds: int) -> dict[str, float]:
    ctx = browser.new_context(base_url=base, locale="zh-CN", timezone_id="Asia/Shanghai",
                              geolocation={"latitude": 30.645, "longitude": 104.48}, permissions=["geolocation"],
                              service_workers="block", **form)
    page = ctx.new_page()
    idle = Idle(page)
    out: dict[str, list[float]] = {}
    try:
        if user is None:
            for _ in range(rounds):
                out.setdefault("login (baseline)", []).append(open_page(page, idle, base, None, "#login-username"))
            return {k: statistics.median(v) for k, v in out.items()}
        page.goto("/")
        page.fill("#login-username", user)
        page.fill("#login-password", PASSWORD)
        page.click("#login-submit")
        page.wait_for_selector("#nav", timeout=20000)
        pages = page.eval_on_selector_all("#nav a", "els => els.map(e => e.dataset.page)")
        # a group's entry (管理) opens its first page; the others are the tabs above it
        for first in page.eval_on_selector_all("#nav a[data-group]:not([data-group=''])", "els => els.map(e => e.dataset.page)"):
            page.goto(f"{base}/#/{first}")
            page.wait_for_selector("#subnav a")
            pages += [p for p in page.eval_on_selector_all("#subnav a", "els => els.map(e => e.dataset.page)") if p not in pages]
        for _ in range(rounds):
            for pid in pages:
                ready = f'#page[data-page="{pid}"] > :not(.loading)'
                out.setdefault(pid, []).append(open_page(page, idle, base, pid, ready))
    finally:
        ctx.close()
    return {k: statistics.median(v) for k, v in out.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table (docs/ui-load-times.md)")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    with demo_api("xlhub-bench-ui-") as hub:
        base = hub.base
        rows = []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                        args=["--headless", "--no-sandbox", "--disable-gpu"])
            for form_name, form in FORMS.items():
                base_s = measure(browser, base, form, None, args.rounds)["login (baseline)"]
                rows.append((form_name, "login (baseline)", "—", base_s, 1.0))
                for user in ("ds-dispatcher", "dsc-worker", "hotline", "admin"):
                    for pid, secs in measure(browser, base, form, user, args.rounds).items():
                        rows.append((form_name, pid, user, secs, secs / base_s))
            browser.close()
        if args.markdown:
            print("| form | page | signed in as | median to network idle | × login page |")
            print("| --- | --- | --- | ---: | ---: |")
            for form, pid, user, secs, ratio in rows:
                print(f"| {form} | {pid} | {user} | {secs * 1000:.0f} ms | {ratio:.2f} |")
        else:
            for form, pid, user, secs, ratio in rows:
                print(f"{form:16} {pid:18} {user:14} {secs * 1000:7.0f} ms  {ratio:5.2f}× login")
        slow = [r for r in rows if r[3] >= 2.0]
        print(f"\n{len(rows)} page loads (median of {args.rounds}); over 2 s: {len(slow)}"
              + (f" — {', '.join(f'{r[0]} {r[1]}' for r in slow)}" if slow else ""))
        return 1 if slow else 0


if __name__ == "__main__":
    raise SystemExit(main())
