#!/usr/bin/python3
"""Simulated-camera RTSP server (GstRtspServer). Runs under Debian's /usr/bin/python3.

Not part of the hub's import tree: python3-gi only exists for the system
interpreter, so the venv side (cameras/sim/server.py) starts this file as a
subprocess. Imports nothing from the project except the sibling scene.py.

    /usr/bin/python3 rtsp_server.py --config mounts.json [--bind 127.0.0.1]
                                    [--port 8554] [--control /tmp/sim.sock]

Config: JSON list of mounts (or {"mounts": [...]}), each
    {"path": "/cam-dsz-01", "width": 640, "height": 360, "fps": 10, "gop": 20,
     "scene": "street", "seed": 1, "state": "normal", "bitrate": 500,
     "timestamp_strip": true, "username": "u", "password": "p"}
or, for a pre-encoded H.264 file served as is (looped, no re-encoding):
    {"path": "/bench-01", "file": "/path/clip.mp4", "fps": 10}

Control (UNIX socket, one JSON object per line, one JSON reply per line):
    {"mount": "/cam-x", "scene": "black"}   -> {"ok": true}
    {"cmd": "status"}                       -> {"ok": true, "mounts": {...}}
    {"cmd": "debug"}                        -> element states and queue levels
Prints ``READY rtsp://<bind>:<port>`` on stdout once listening; logs on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socketserver
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gi  # noqa: E402

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
gi.require_version("GstVideo", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer, GstVideo  # noqa: E402

import scene as scenelib  # noqa: E402

ANON_ROLE = "anonymous"


def log(msg: str) -> None:
    sys.stderr.write(f"[sim-rtsp {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


def load_h264_file(path: str) -> tuple[list[tuple[bytes, bool, float]], dict]:
    """Demux an MP4/MKV/raw H.264 file into Annex-B access units (no decoding).

    Returns ([(au_bytes, is_keyframe, duration_s)], info) with SPS/PPS repeated
    before every IDR so a client can join at any keyframe.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(path)
    loc = path.replace("\\", "\\\\").replace('"', '\\"')
    pipe = Gst.parse_launch(
        f'filesrc location="{loc}" ! parsebin ! h264parse config-interval=-1 ! '
        "video/x-h264,stream-format=byte-stream,alignment=au ! "
        "appsink name=sink sync=false emit-signals=false max-buffers=0")
    sink = pipe.get_by_name("sink")
    pipe.set_state(Gst.State.PLAYING)
    aus: list[tuple[bytes, bool, float]] = []
    info: dict = {}
    try:
        while True:
            sample = sink.emit("try-pull-sample", 10 * Gst.SECOND)
            if sample is None:
                break
            if not info:
                s = sample.get_caps().get_structure(0)
                info = {"width": s.get_value("width"), "height": s.get_value("height")}
                ok, num, den = s.get_fraction("framerate")
                if ok and num > 0 and den > 0:
                    info["fps"] = num / den
            buf = sample.get_buffer()
            ok, mapinfo = buf.map(Gst.MapFlags.READ)
            if not ok:
                continue
            try:
                data = bytes(mapinfo.data)
            finally:
                buf.unmap(mapinfo)
            key = not buf.has_flags(Gst.BufferFlags.DELTA_UNIT)
            dur = buf.duration / Gst.SECOND if buf.duration != Gst.CLOCK_TIME_NONE else 0.0
            aus.append((data, key, dur))
        bus = pipe.get_bus()
        msg = bus.pop_filtered(Gst.MessageType.ERROR)
        if msg is not None and not aus:
            err, dbg = msg.parse_error()
            raise RuntimeError(f"cannot read {path}: {err.message}")
    finally:
        pipe.set_state(Gst.State.NULL)
    if not aus:
        raise RuntimeError(f"no H.264 video found in {path}")
    first_key = next((i for i, a in enumerate(aus) if a[1]), None)
    if first_key is None:
        raise RuntimeError(f"no keyframe in {path}")
    return aus[first_key:], info


class Mount:
    """One RTSP mount: a shared media factory fed by a pacing thread through appsrc."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.path = spec["path"] if spec["path"].startswith("/") else "/" + spec["path"]
        self.file = spec.get("file")
        self.lock = threading.Lock()
        self.appsrc = None
        self.media = None
        self.generation = 0
        self.wake = threading.Event()
        self.stopping = False
        self.frames_sent = 0
        self.keyframe_due: list[float] = []  # monotonic times: make a keyframe then
        self.held = None            # the media we keep prepared
        self.clients = 0            # RTSP sessions on this mount (refreshed every second)
        self.watched_until = 0.0    # monotonic: feed at least until then (after a PLAY)
        self.username = spec.get("username")
        self.password = spec.get("password")
        if self.file:
            self.aus, info = load_h264_file(self.file)
            self.width = int(info.get("width") or spec.get("width") or 0)
            self.height = int(info.get("height") or spec.get("height") or 0)
            self.fps = float(spec.get("fps") or info.get("fps") or 10)
            self.gen = None
            caps = "video/x-h264,stream-format=byte-stream,alignment=au"
            chain = "h264parse config-interval=-1"
            log(f"{self.path}: file {self.file} {len(self.aus)} AUs {self.width}x{self.height}@{self.fps:g}")
        else:
            self.width = int(spec.get("width", 640))
            self.height = int(spec.get("height", 360))
            self.fps = float(spec.get("fps", 10))
            gop = int(spec.get("gop", max(1, int(self.fps * 2))))
            if spec.get("bitrate"):  # average bitrate (kbit/s), like a camera in CBR mode
                rc = f"pass=cbr bitrate={int(spec['bitrate'])}"
            else:
                # Constant QP (default 26, ~250 kbit/s for 640x360@10 "normal"): like a
                # camera in VBR mode, and a frozen picture then decodes to bit-identical
                # frames between keyframes (ABR would keep "refining" it).
                rc = f"pass=quant quantizer={int(spec.get('qp', 26))}"
            self.gen = scenelib.SceneGenerator(
                self.width, self.height, self.fps, seed=int(spec.get("seed", 1)),
                scene=spec.get("scene", "street"), state=spec.get("state", "normal"),
                timestamp_strip=bool(spec.get("timestamp_strip", True)))
            num, den = _fraction(self.fps)
            caps = (f"video/x-raw,format=RGB,width={self.width},height={self.height},"
                    f"framerate={num}/{den}")
            chain = (f"videoconvert ! video/x-raw,format=I420 ! "
                     f"x264enc name=enc tune=zerolatency speed-preset=ultrafast key-int-max={gop} "
                     f"{rc} threads=1 {spec.get('x264_options', '')} ! "
                     f"video/x-h264,profile=constrained-baseline")
        launch = (f"( appsrc name=src is-live=true format=time do-timestamp=false "
                  f"block=false max-bytes=0 max-buffers=4 leaky-type=downstream caps=\"{caps}\" ! "
                  f"queue max-size-buffers=4 leaky=downstream ! {chain} ! "
                  f"rtph264pay name=pay0 pt=96 config-interval=-1 )")
        self.factory = GstRtspServer.RTSPMediaFactory()
        self.factory.set_launch(launch)
        self.factory.set_shared(True)
        self.factory.connect("media-configure", self._on_media_configure)
        self.thread = threading.Thread(target=self._run, name=f"feed{self.path}", daemon=True)

    # -- media lifecycle --------------------------------------------------------------
    # The shared media is prepared once and then kept: every mount holds one extra
    # prepare on it. Without that, GstRtspServer unprepares the media when the last
    # client leaves, and a client that reconnects at that very moment (each client
    # runs in its own thread) is handed the dying media and gets "503" ("can not
    # reuse media"). Holding it costs nothing: frames are only generated and
    # encoded while someone is watching (see _run).
    def _on_media_configure(self, factory, media):
        appsrc = media.get_element().get_by_name("src")
        with self.lock:
            self.generation += 1
            gen = self.generation
            self.appsrc, self.media = appsrc, media
            # Preparing needs encoded data (the SDP carries SPS/PPS): feed for a while.
            self.watched_until = time.monotonic() + 3.0
        self.wake.set()
        media.connect("prepared", self._on_prepared, gen)
        media.connect("unprepared", self._on_unprepared, gen)
        log(f"{self.path}: media configured (#{gen})")

    def _on_prepared(self, media, gen):
        with self.lock:
            if self.generation != gen or self.held is media:
                return
            self.held = media
        if not media.prepare(GstRtspServer.RTSPThread.new(GstRtspServer.RTSPThreadType.MEDIA)):
            log(f"{self.path}: could not hold media #{gen}")
            with self.lock:
                self.held = None

    def release(self) -> None:
        """Drop the extra hold (server shutdown)."""
        with self.lock:
            media, self.held = self.held, None
        if media is not None:
            media.unprepare()

    def client_playing(self) -> None:
        """A client just sent PLAY: give it a keyframe soon, like real cameras do,
        instead of making it wait up to a whole GOP."""
        now = time.monotonic()
        with self.lock:
            self.keyframe_due += [now + 0.05] if self.gen is None else [now + 0.05, now + 0.4]
            self.watched_until = now + 3.0
        self.wake.set()

    @property
    def watched(self) -> bool:
        return self.clients > 0 or time.monotonic() < self.watched_until

    def _take_keyframe_due(self) -> bool:
        now = time.monotonic()
        with self.lock:
            due = [t for t in self.keyframe_due if t <= now]
            if due:
                self.keyframe_due = [t for t in self.keyframe_due if t > now]
        return bool(due)

    def _on_unprepared(self, media, gen):
        with self.lock:
            if self.held is media:
                self.held = None
            if self.generation == gen:
                self.appsrc, self.media = None, None
        log(f"{self.path}: media unprepared (#{gen})")

    # -- feeding (own thread) --------------------------------------------------------
    def _run(self):
        period = 1.0 / self.fps
        deadline = time.monotonic()
        current_gen, au_index = -1, 0
        while not self.stopping:
            with self.lock:
                appsrc, gen = self.appsrc, self.generation
            if appsrc is None or not self.watched:  # nobody watching: no frames, no CPU
                self.wake.wait(0.5)
                self.wake.clear()
                deadline = time.monotonic()
                continue
            if gen != current_gen:  # a new media: (re)start the file at its first keyframe
                current_gen, au_index = gen, 0
            step = period
            running_time = _running_time(appsrc)
            # Push only while the pipeline is PLAYING. The RTSP media goes PAUSED between
            # DESCRIBE and PLAY and when its last client leaves; a frame stamped across such
            # a state change could be stamped with a stale base time and then look
            # minutes "in the future" to the sinks, which would wait for it forever.
            if running_time is not None:
                force_key = self._take_keyframe_due()
                if self.gen is not None:
                    if force_key:
                        enc = self.media_element_by_name("enc")
                        if enc is not None:
                            enc.send_event(GstVideo.video_event_new_upstream_force_key_unit(
                                Gst.CLOCK_TIME_NONE, True, 0))
                    data = self.gen.next_frame_bytes()
                else:
                    if force_key and not self.aus[au_index][1]:
                        # No encoder to ask for a keyframe: the first viewer gets the file
                        # from its start, a later one makes everyone skip ahead to the next
                        # keyframe (time never runs backwards for the others).
                        if self.clients == 0:
                            au_index = 0
                        else:
                            while not self.aus[au_index][1]:
                                au_index = (au_index + 1) % len(self.aus)
                    data, _key, dur = self.aus[au_index]
                    au_index = (au_index + 1) % len(self.aus)
                    if dur > 0 and self.spec.get("fps") is None:
                        step = dur
                buf = Gst.Buffer.new_wrapped(data)
                buf.pts = buf.dts = running_time
                buf.duration = int(step * Gst.SECOND)
                if appsrc.emit("push-buffer", buf) == Gst.FlowReturn.OK:
                    self.frames_sent += 1
            deadline += step
            delay = deadline - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -1.0:  # fell far behind (paused process, overload): resync
                deadline = time.monotonic()

    def media_element_by_name(self, name: str):
        with self.lock:
            media = self.media
        if media is None:
            return None
        return media.get_element().get_by_name(name)

    def set_state(self, state: str) -> None:
        if self.gen is None:
            raise ValueError(f"{self.path} serves a file; scene states do not apply")
        self.gen.set_state(state)

    def info(self) -> dict:
        d = {"width": self.width, "height": self.height, "fps": self.fps,
             "frames_sent": self.frames_sent, "active": self.appsrc is not None and self.watched,
             "auth": bool(self.username)}
        if self.gen is not None:
            d.update(scene=self.gen.scene, state=self.gen.state)
        else:
            d.update(file=self.file)
        return d


def _running_time(element) -> int | None:
    """The pipeline running time now, or None unless ``element`` is PLAYING."""
    _ret, state, _pending = element.get_state(0)
    if state != Gst.State.PLAYING:
        return None
    clock = element.get_clock()
    if clock is None:
        return None
    now, base = clock.get_time(), element.get_base_time()
    return now - base if now >= base else None


def _set_auth_methods(auth, mask: int) -> None:
    """gst_rtsp_auth_set_supported_methods() with a bit mask.

    GstRTSPAuthMethod is introspected as an enum, so PyGObject refuses
    BASIC|DIGEST; call the C function through ctypes instead.
    """
    import ctypes
    try:
        lib = ctypes.CDLL("libgstrtspserver-1.0.so.0")
        get_ptr = ctypes.pythonapi.PyCapsule_GetPointer
        get_ptr.restype = ctypes.c_void_p
        get_ptr.argtypes = [ctypes.py_object, ctypes.c_char_p]
        ptr = get_ptr(auth.__gpointer__, None)
        lib.gst_rtsp_auth_set_supported_methods.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.gst_rtsp_auth_set_supported_methods(ptr, mask)
    except Exception as e:  # pragma: no cover - keep Basic only
        log(f"cannot enable Digest auth ({e}); Basic only")
        return
    if int(auth.get_supported_methods()) != mask:
        log(f"auth methods are {auth.get_supported_methods()}, wanted {mask}")


def _fraction(fps: float) -> tuple[int, int]:
    if abs(fps - round(fps)) < 1e-6:
        return int(round(fps)), 1
    return int(round(fps * 1001)), 1001


class SimServer:
    def __init__(self, mounts: list[dict], bind: str, port: int, control: str | None):
        self.bind, self.port, self.control_path = bind, port, control
        self.mounts: dict[str, Mount] = {}
        for spec in mounts:
            m = Mount(spec)
            if m.path in self.mounts:
                raise ValueError(f"duplicate mount {m.path}")
            self.mounts[m.path] = m
        self.server = GstRtspServer.RTSPServer()
        self.server.set_address(bind)
        self.server.set_service(str(port))
        self._setup_auth()
        self.server.connect("client-connected", self._on_client_connected)
        mp = self.server.get_mount_points()
        for m in self.mounts.values():
            mp.add_factory(m.path, m.factory)
        self.loop = GLib.MainLoop()
        self.control_server = None

    def _setup_auth(self):
        users = [m for m in self.mounts.values() if m.username]
        if not users:
            return
        auth = GstRtspServer.RTSPAuth()
        anon = GstRtspServer.RTSPToken()
        anon.set_string("media.factory.role", ANON_ROLE)
        auth.set_default_token(anon)
        roles = {}
        for m in users:
            role = f"user:{m.username}"
            if m.username in roles and roles[m.username] != m.password:
                raise ValueError(f"user {m.username} has two different passwords")
            roles[m.username] = m.password
            token = GstRtspServer.RTSPToken()
            token.set_string("media.factory.role", role)
            auth.add_basic(GstRtspServer.RTSPAuth.make_basic(m.username, m.password), token)
            token2 = GstRtspServer.RTSPToken()
            token2.set_string("media.factory.role", role)
            auth.add_digest(m.username, m.password, token2)
        _set_auth_methods(auth, int(GstRtsp.RTSPAuthMethod.BASIC) | int(GstRtsp.RTSPAuthMethod.DIGEST))
        # Every role may "access" (see) every mount, else the server answers 404;
        # "construct" is what a protected mount refuses, and that yields 401 + a
        # WWW-Authenticate challenge, like a real camera.
        all_roles = [ANON_ROLE] + [f"user:{u}" for u in roles]
        for m in self.mounts.values():
            perms = GstRtspServer.RTSPPermissions()
            allowed = [f"user:{m.username}"] if m.username else all_roles
            for role in all_roles:
                perms.add_permission_for_role(role, "media.factory.access", True)
                perms.add_permission_for_role(role, "media.factory.construct", role in allowed)
            m.factory.set_permissions(perms)
        self.server.set_auth(auth)

    def _on_client_connected(self, server, client):
        client.connect("play-request", self._on_play_request)

    def _on_play_request(self, client, ctx):
        try:
            path = ctx.uri.abspath.rstrip("/")
        except Exception:
            return
        for p, m in self.mounts.items():
            if path == p or path.startswith(p + "/"):
                m.client_playing()
                return

    def client_counts(self) -> dict[str, int]:
        counts = {p: 0 for p in self.mounts}
        by_media = {}
        for p, m in self.mounts.items():
            if m.media is not None:
                by_media[hash(m.media)] = p
        try:
            for session in self.server.get_session_pool().filter(None, None):
                for sm in session.filter(None, None):
                    p = by_media.get(hash(sm.get_media()))
                    if p is not None:
                        counts[p] += 1
        except Exception as e:  # never let status fail because of this
            log(f"client count failed: {e}")
        return counts

    def pipeline_debug(self) -> dict:
        """Queue levels and element states per mount, to diagnose a stalled stream."""
        out = {}
        for p, m in self.mounts.items():
            if m.media is None:
                continue
            el = m.media.get_element()
            d = {"media_status": m.media.get_status().value_nick}
            for name in ("src", "queue0", "enc", "pay0"):
                e = el.get_by_name(name)
                if e is None:
                    continue
                d[f"{name}_state"] = e.get_state(0)[1].value_nick
                for prop in ("current-level-buffers", "seqnum"):
                    if e.find_property(prop) is not None:
                        d[f"{name}_{prop}"] = e.get_property(prop)
            out[p] = d
        return out

    def status(self) -> dict:
        counts = self._in_main(self.client_counts)
        out = {}
        for p, m in self.mounts.items():
            d = m.info()
            d["clients"] = counts.get(p, 0)
            out[p] = d
        return {"ok": True, "url": f"rtsp://{self.bind}:{self.port}", "mounts": out}

    def _in_main(self, fn, timeout=2.0):
        """Run fn in the GLib main loop thread and return its result."""
        result, done = {}, threading.Event()

        def call():
            try:
                result["v"] = fn()
            except Exception as e:  # pragma: no cover
                result["e"] = e
            done.set()
            return False
        GLib.idle_add(call)
        if not done.wait(timeout):
            raise TimeoutError("main loop busy")
        if "e" in result:
            raise result["e"]
        return result["v"]

    def handle_command(self, cmd: dict) -> dict:
        if not isinstance(cmd, dict):
            return {"ok": False, "error": "command must be a JSON object"}
        if cmd.get("cmd") == "status":
            return self.status()
        if cmd.get("cmd") == "debug":
            return {"ok": True, "debug": self._in_main(self.pipeline_debug)}
        if cmd.get("cmd") == "ping":
            return {"ok": True}
        mount = cmd.get("mount")
        state = cmd.get("scene", cmd.get("state"))
        if mount is None or state is None:
            return {"ok": False, "error": "expected {\"mount\": ..., \"scene\": ...} or {\"cmd\": \"status\"}"}
        m = self.mounts.get(mount if mount.startswith("/") else "/" + mount)
        if m is None:
            return {"ok": False, "error": f"unknown mount {mount}"}
        try:
            m.set_state(state)
        except ValueError as e:
            return {"ok": False, "error": str(e)}
        log(f"{m.path}: scene -> {state}")
        return {"ok": True}

    def _start_control(self):
        if not self.control_path:
            return
        if os.path.exists(self.control_path):
            os.unlink(self.control_path)
        sim = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                for line in self.rfile:
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        reply = sim.handle_command(json.loads(line))
                    except json.JSONDecodeError as e:
                        reply = {"ok": False, "error": f"bad JSON: {e}"}
                    except Exception as e:
                        reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
                    self.wfile.write((json.dumps(reply) + "\n").encode())
                    self.wfile.flush()

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        self.control_server = Server(self.control_path, Handler)
        threading.Thread(target=self.control_server.serve_forever, name="control",
                         daemon=True).start()

    def _housekeeping(self):
        self.server.get_session_pool().cleanup()
        for path, n in self.client_counts().items():
            m = self.mounts[path]
            if n and not m.clients:
                m.wake.set()
            m.clients = n
        return True

    def run(self):
        if self.server.attach(None) == 0:
            raise RuntimeError(f"cannot listen on {self.bind}:{self.port}")
        self._start_control()
        for m in self.mounts.values():
            m.thread.start()
        GLib.timeout_add(1000, self._housekeeping)
        for sig in (signal.SIGTERM, signal.SIGINT):
            GLib.unix_signal_add(GLib.PRIORITY_HIGH, sig, self._quit, sig)
        port = self.server.get_bound_port()
        print(f"READY rtsp://{self.bind}:{port}", flush=True)
        log(f"listening on {self.bind}:{port}, mounts: {', '.join(self.mounts)}")
        self.loop.run()
        for m in self.mounts.values():
            m.stopping = True
            m.wake.set()
        for m in self.mounts.values():
            m.thread.join(1.0)
            m.release()
        if self.control_server is not None:
            self.control_server.shutdown()
            self.control_server.server_close()
            try:
                os.unlink(self.control_path)
            except OSError:
                pass
        log("stopped")

    def watch_parent(self, ppid: int) -> None:
        def check():
            if os.getppid() != ppid:
                log(f"parent {ppid} is gone: stopping")
                self.loop.quit()
                return False
            return True
        GLib.timeout_add(1000, check)

    def _quit(self, sig):
        log(f"signal {sig}: stopping")
        self.loop.quit()
        return False


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="JSON file with the mounts")
    ap.add_argument("--bind", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8554, help="0 = any free port")
    ap.add_argument("--control", help="UNIX socket path for runtime control")
    ap.add_argument("--exit-with-parent", action="store_true",
                    help="stop when the process that started us dies (no orphans)")
    args = ap.parse_args(argv)
    with open(args.config) as f:
        cfg = json.load(f)
    mounts = cfg["mounts"] if isinstance(cfg, dict) else cfg
    Gst.init(None)
    try:
        sim = SimServer(mounts, args.bind, args.port, args.control)
        if args.exit_with_parent:
            sim.watch_parent(os.getppid())
        sim.run()
    except Exception as e:
        log(f"fatal: {type(e).__name__}: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
