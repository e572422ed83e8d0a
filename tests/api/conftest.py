"""A real API server (uvicorn on a free loopback port) over a database seeded with the
demo site, and logged-in HTTP clients for its users."""
from __future__ import annotations

import threading
import time

import httpx
import pytest
import uvicorn

from api.app import create_app, server_config
from config.settings import Settings
from hub.embedded import free_port
from store import identity
from store.db import connect
from store.registry import sync_site

PASSWORD = "Demo-pass-2026"


@pytest.fixture(scope="module")
def seeded_db(db_url, demo_site) -> str:
    with connect(db_url) as conn:
        sync_site(conn, demo_site)
        for user in demo_site.users:
            identity.set_password(conn, user.username, PASSWORD)
    return db_url


class ApiServer:
    def __init__(self, db_url: str, mqtt_url: str | None, expected_workers=None, **settings):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.settings = Settings(http_port=self.port, **settings)
        app = create_app(self.settings, db_url=db_url, mqtt_url=mqtt_url, expected_workers=expected_workers)
        self.server = uvicorn.Server(server_config(app, self.settings))      # as the hub serves it
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("API server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)

    def client(self, username: str | None = None, password: str = PASSWORD) -> httpx.Client:
        headers = {}
        if username:
            r = httpx.post(f"{self.base_url}/api/auth/login", json={"username": username, "password": password, "token": True})
            assert r.status_code == 200, r.text
            headers["Authorization"] = f"Bearer {r.json()['token']}"
        return httpx.Client(base_url=self.base_url, timeout=10, headers=headers)


@pytest.fixture(scope="module")
def api(seeded_db, mqtt):
    with ApiServer(seeded_db, mqtt.url) as server:
        yield server
