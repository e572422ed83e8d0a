"""Venv-side control of the simulated RTSP cameras (standard library + numpy).

The RTSP server itself (rtsp_server.py) needs python3-gi, which only Debian's
/usr/bin/python3 has, so it runs as a child process; this module starts,
steers, freezes, kills and restarts it.

    from cameras.sim.server import SimRtspServer, decode_timestamp_strip

    mounts = [{"path": "/cam-dsz-01", "width": 640, "height": 360, "fps": 10, "gop": 20},
              {"path": "/cam-dsz-02", "username": "admin", "password": "12345"}]
    with SimRtspServer(mounts) as sim:
        url = sim.url("/cam-dsz-02", with_credentials=True)
        sim.set_scene("/cam-dsz-01", "black")      # covered lens
        sim.pause(); sim.resume()                   # camera hangs: socket open, no data
        sim.kill(); sim.restart()                   # camera reboots on the same port
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path
from urllib.parse import quote

from cameras.sim.scene import (  # noqa: F401  (re-exported)
    MOTION_BAND,
    STATES,
    SceneGenerator,
    decode_timestamp_strip,
    strip_box,
)

SERVER_SCRIPT = Path(__file__).resolve().with_name("rtsp_server.py")
SYSTEM_PYTHON = os.environ.get("XLHUB_SIM_PYTHON", "/usr/bin/python3")

__all__ = ["SimRtspServer", "SimServerError", "decode_timestamp_strip", "encode_scene_file",
           "free_port", "STATES", "MOTION_BAND", "strip_box"]


class SimServerError(RuntimeError):
    """The simulated RTSP server failed to start or refused a command."""


def free_port(bind: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``bind``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((bind, 0))
        return s.getsockname()[1]


def _reap(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            proc.kill()
            proc.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            pass


class SimRtspServer:
    """A real RTSP server (GstRtspServer) with simulated cameras, in a child process.

    ``mounts``: list of dicts, see rtsp_server.py (path, width, height, fps, gop,
    scene, seed, state, bitrate, timestamp_strip, username, password, file).
    """

    def __init__(self, mounts: list[dict], port: int | None = None, bind: str = "127.0.0.1",
                 workdir: str | os.PathLike | None = None, python: str = SYSTEM_PYTHON):
        self.mounts: dict[str, dict] = {}
        for spec in copy.deepcopy(list(mounts)):
            path = "/" + str(spec["path"]).lstrip("/")
            spec["path"] = path
            if path in self.mounts:
                raise ValueError(f"duplicate mount {path}")
            if spec.get("file") and not os.path.isfile(spec["file"]):
                raise FileNotFoundError(spec["file"])
            self.mounts[path] = spec
        self.bind = bind
        self.port = int(port) if port else free_port(bind)
        self.python = python
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="xlsim-") if workdir is None else workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.control_path = str(self.workdir / "control.sock")
        self.stdout_path = self.workdir / "server.out"
        self.stderr_path = self.workdir / "server.log"
        self.proc: subprocess.Popen | None = None
        self._finalizer = None
        self.paused = False

    # -- lifecycle -----------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self, timeout: float = 20.0) -> "SimRtspServer":
        """Spawn the server and wait until it listens. Raises SimServerError."""
        if self.running:
            raise SimServerError("already running")
        if not os.path.exists(self.python):
            raise SimServerError(f"{self.python} not found (the server needs Debian's python3 "
                                 "with python3-gi and gir1.2-gst-rtsp-server-1.0)")
        config = self.workdir / "mounts.json"
        config.write_text(json.dumps(list(self.mounts.values()), indent=1))
        self.stdout_path.write_text("")
        out = open(self.stdout_path, "wb")
        err = open(self.stderr_path, "ab")
        try:
            self.proc = subprocess.Popen(
                [self.python, str(SERVER_SCRIPT), "--config", str(config), "--bind", self.bind,
                 "--port", str(self.port), "--control", self.control_path, "--exit-with-parent"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, close_fds=True,
                env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")})
        finally:
            out.close()
            err.close()
        self.paused = False
        if self._finalizer is not None:
            self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _reap, self.proc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "READY " in self.stdout_path.read_text(errors="replace"):
                return self
            if self.proc.poll() is not None:
                raise SimServerError(
                    f"simulated RTSP server exited with code {self.proc.returncode} on start:\n"
                    f"{self.stderr_tail()}")
            time.sleep(0.05)
        _reap(self.proc)
        raise SimServerError(f"simulated RTSP server not ready after {timeout:.0f} s:\n"
                             f"{self.stderr_tail()}")

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds."""
        if not self.running:
            return
        if self.paused:
            self.resume()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def kill(self) -> None:
        """SIGKILL: the camera dies at once (connections reset)."""
        if self.running:
            self.proc.kill()
            self.proc.wait(5)
        self.paused = False

    def pause(self) -> None:
        """SIGSTOP: a hung camera; sockets stay open but nothing is sent or answered."""
        if self.running:
            self.proc.send_signal(signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.running:
            self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def restart(self, timeout: float = 20.0) -> "SimRtspServer":
        """Start again on the same port (after kill(), stop(), or while running)."""
        if self.running:
            self.stop()
        return self.start(timeout)

    def close(self) -> None:
        """stop() and remove the work directory if it was a temporary one."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "SimRtspServer":
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- addressing ----------------------------------------------------------------
    def url(self, path: str, with_credentials: bool = False) -> str:
        path = "/" + path.lstrip("/")
        spec = self.mounts.get(path)
        if spec is None:
            raise KeyError(f"unknown mount {path}")
        cred = ""
        if with_credentials and spec.get("username"):
            cred = f"{quote(spec['username'], safe='')}:{quote(spec.get('password', ''), safe='')}@"
        return f"rtsp://{cred}{self.bind}:{self.port}{path}"

    # -- runtime control -----------------------------------------------------------
    def command(self, cmd: dict, timeout: float = 5.0) -> dict:
        """Send one JSON command on the control socket and return the JSON reply."""
        if not self.running:
            raise SimServerError("server is not running")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(self.control_path)
            s.sendall((json.dumps(cmd) + "\n").encode())
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        if not buf:
            raise SimServerError(f"no reply to {cmd}")
        return json.loads(buf)

    def set_scene(self, path: str, scene: str) -> None:
        """Switch a mount's scene state: normal, motion, black, blur, shift, dark, bright, freeze."""
        reply = self.command({"mount": "/" + path.lstrip("/"), "scene": scene})
        if not reply.get("ok"):
            raise SimServerError(reply.get("error", "refused"))

    def status(self) -> dict:
        """{path: {"state", "clients", "frames_sent", "active", ...}} for every mount."""
        reply = self.command({"cmd": "status"})
        if not reply.get("ok"):
            raise SimServerError(reply.get("error", "refused"))
        return reply["mounts"]

    def stderr_tail(self, n: int = 40) -> str:
        try:
            lines = self.stderr_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


def encode_scene_file(path: str | os.PathLike, seconds: float, width: int = 640, height: int = 360,
                      fps: float = 10, gop: int = 20, scene: str = "motion", seed: int = 1,
                      timestamp_strip: bool = False, bitrate_kbps: int | None = None) -> Path:
    """Write an H.264 MP4 (no B-frames, fixed GOP) of the simulated street scene.

    ``scene`` is the state (normal, motion, blur...). The timestamp strip is off
    by default: in a file it would carry encoding-time values, not send times.
    Constant QP 26 unless ``bitrate_kbps`` is given. Uses PyAV (libx264); falls
    back to the ffmpeg command line.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    gen = SceneGenerator(width, height, fps, seed=seed, state=scene,
                         timestamp_strip=timestamp_strip)
    n = max(1, int(round(seconds * fps)))
    t0 = int(time.time() * 1000)
    # One slice per frame (no sliced threads): what most cameras send, and ffmpeg's
    # RTSP client hands multi-slice frames over as one packet per slice.
    x264_params = f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0:threads=1:sliced-threads=0"
    rc_opts = {"qp": "26"} if bitrate_kbps is None else {}
    try:
        import av
    except ImportError:
        av = None
    if av is not None:
        from fractions import Fraction
        rate = Fraction(fps).limit_denominator(1001)
        with av.open(str(path), "w", format="mp4") as out:
            st = out.add_stream("libx264", rate=rate)
            st.width, st.height, st.pix_fmt = width, height, "yuv420p"
            st.codec_context.thread_count = 1
            if bitrate_kbps is not None:
                st.bit_rate = bitrate_kbps * 1000
            st.codec_context.options = {"preset": "ultrafast", "tune": "zerolatency",
                                        "x264-params": x264_params, **rc_opts}
            for i in range(n):
                rgb = gen.next_frame(t0 + int(i * 1000 / fps))
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
                frame.pts = i
                frame.time_base = 1 / rate
                for pkt in st.encode(frame):
                    out.mux(pkt)
            for pkt in st.encode(None):
                out.mux(pkt)
        return path
    cmd = ["ffmpeg", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{width}x{height}", "-r", str(fps), "-i", "-", "-c:v", "libx264", "-threads", "1",
           "-preset", "ultrafast", "-tune", "zerolatency", "-x264-params", x264_params,
           *(["-qp", "26"] if bitrate_kbps is None else ["-b:v", f"{bitrate_kbps}k"]), "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(path)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
    for i in range(n):
        proc.stdin.write(gen.next_frame(t0 + int(i * 1000 / fps)).tobytes())
    proc.stdin.close()
    if proc.wait() != 0:
        raise RuntimeError(f"ffmpeg failed ({proc.returncode}) writing {path}")
    return path


def _main(argv: list[str] | None = None) -> int:
    """Run N simulated cameras by hand: python -m cameras.sim.server --cameras 4."""
    import argparse
    ap = argparse.ArgumentParser(description="Simulated RTSP cameras for Xueliang Hub")
    ap.add_argument("--cameras", type=int, default=4)
    ap.add_argument("--port", type=int, default=8554)
    ap.add_argument("--bind", default="127.0.0.1")
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--fps", type=float, default=10)
    ap.add_argument("--username")
    ap.add_argument("--password")
    args = ap.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    mounts = [{"path": f"/cam-{i + 1:02d}", "width": w, "height": h, "fps": args.fps,
               "gop": int(args.fps * 2), "seed": i + 1, "username": args.username,
               "password": args.password} for i in range(args.cameras)]
    mounts = [{k: v for k, v in m.items() if v is not None} for m in mounts]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))   # stop the child on SIGTERM too
    with SimRtspServer(mounts, port=args.port, bind=args.bind) as sim:
        for m in mounts:
            print(sim.url(m["path"], with_credentials=True), flush=True)
        print(f"control socket: {sim.control_path}  (Ctrl-C to stop)", flush=True)
        try:
            while sim.running:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
        if not sim.running:
            print(sim.stderr_tail(), flush=True)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
