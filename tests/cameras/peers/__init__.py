"""RTSP servers that are not the hub's simulator, as test peers (see gst_rtsp.py)."""
from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path

from cameras.sim.server import free_port
from tests.processes import stop

HERE = Path(__file__).resolve().parent
SYSTEM_PYTHON = "/usr/bin/python3"       # python3-gi lives there, not in the venv


class GstPeer:
    """GStreamer's RTSP server (tests/cameras/peers/gst_rtsp.py) as a subprocess."""

    def __init__(self, *, protocols: str = "all", codec: str = "h264", user: str | None = None,
                 password: str | None = None, port: int | None = None, path: str = "/stream", fps: int = 10,
                 gop_s: float = 2.0, audio: str | None = None) -> None:
        self.port = port or free_port()
        self.path = path
        self.argv = [SYSTEM_PYTHON, str(HERE / "gst_rtsp.py"), "--port", str(self.port), "--path", path,
                     "--protocols", protocols, "--codec", codec, "--fps", str(fps),
                     "--gop-s", str(gop_s)]
        if audio:
            self.argv += ["--audio", audio]
        if user:
            self.argv += ["--user", user, "--password", password or ""]
        self.proc: subprocess.Popen | None = None
        self.clients = 0            # RTSP connections open at the server now
        self.most_clients = 0       # the most at once (since reset_most)

    def url(self, user: str | None = None, password: str | None = None, path: str | None = None) -> str:
        auth = f"{user}:{password}@" if user else ""
        return f"rtsp://{auth}127.0.0.1:{self.port}{path or self.path}"

    def start(self, timeout: float = 20.0) -> GstPeer:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ready: list[str] = []
        reader = threading.Thread(target=lambda: ready.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not ready or not ready[0].startswith("READY"):
            self.stop()
            raise RuntimeError(f"GStreamer peer did not start: {self.proc.stderr.read()[-2000:]}")
        threading.Thread(target=self._count_clients, args=(self.proc,), daemon=True).start()
        return self

    def _count_clients(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            parts = line.split()
            if len(parts) == 2 and parts[0] == "CLIENTS" and parts[1].isdigit():
                self.clients = int(parts[1])
                self.most_clients = max(self.most_clients, self.clients)

    def reset_most(self) -> None:
        """Count the most RTSP connections at once from now on."""
        self.most_clients = self.clients

    def stop(self) -> None:
        stop(self.proc)
        self.proc = None

    def __enter__(self) -> GstPeer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class SilentServer:
    """Accepts TCP connections and never says a word (a hung camera, a half-open NAT)."""

    def __init__(self, answer: bytes | None = None) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.answer = answer            # given: say this (not RTSP) and hang up
        self.conns: list[socket.socket] = []
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            if self.answer is None:
                self.conns.append(conn)
                continue
            try:
                conn.settimeout(2)
                conn.recv(4096)
                conn.sendall(self.answer)
            except OSError:
                pass
            finally:
                conn.close()

    def close(self) -> None:
        self._stop = True
        time.sleep(0.25)
        for c in self.conns:
            c.close()
        self.sock.close()
