"""The camera worker process: a shard of the cameras, read, watched, analysed, evidenced, recorded.

``CameraWorker(settings, shard=i, shards=n).run(stop_event)`` (started by hub.process)
owns the cameras whose stable hash falls in shard ``i``. Per camera, a ``CameraPipeline`` (cameras/pipeline.py)
ties together the reader thread (cameras.reader), the evidence ring (cameras.evidence),
the health state machine (cameras.health) and the analytics (cameras.analytics). The
worker's main thread ticks every pipeline twice a second (health is judged by the clock,
not by the readers), publishes health telemetry, finishes clips, writes its heartbeat.

Everything leaves over MQTT as the camera itself would send it (devices.contract):

    xlhub/v1/camera/<id>/tele                   health (fps, bitrate, keyframe interval, …)
    xlhub/v1/camera/<id>/evt/offline            camera.offline  (+ last good snapshot)
    xlhub/v1/camera/<id>/evt/online             camera.online
    xlhub/v1/camera/<id>/evt/frozen[.cleared]   camera.frozen
    xlhub/v1/camera/<id>/evt/tamper.<covered|defocused|moved|dark|bright>   (+ snapshot, clip)
    xlhub/v1/camera/<id>/evt/tamper.cleared     (detail.condition)
    xlhub/v1/camera/<id>/evt/motion             camera.motion (+ snapshot, clip)
    xlhub/v1/camera/<id>/evt/flag               camera.flag: a supervisor's flag (+ snapshot, clip)

and commands come in on ``xlhub/v1/camera/<id>/cmd/<name>`` — ``flag``, ``snapshot``,
``maintenance``, ``rebaseline``, ``ptz`` — answered on the MQTT 5 response topic with the
correlation data echoed (body: the contract's CommandResult).

Cameras with an ONVIF address share one ONVIF loop (cameras.onvif_link): a camera the site
file gives only by that address gets its stream URI from the camera itself, and ``ptz``
commands (move, stop, presets, goto) are carried out over a session kept per camera.

The envelope ``id`` of an event is a ULID chosen here, and the ``evidence`` rows of its
files carry it as ``event_id`` (the worker writes those rows itself: it owns the files).
A clip's after-part is still being recorded when the event leaves: the event carries the
clip's evidence id with ``pending: true``; its row (with the SHA-256) follows seconds
later. A supervisor's flag waits for the clip and carries both hashes.
"""
from __future__ import annotations

import base64
import dataclasses
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt

from bus.commands import (
    Command,
    FlagCommand,
    MaintenanceCommand,
    PtzCommand,
    RebaselineCommand,
    SnapshotCommand,
)

from cameras.batcher import AnalysisBatcher
from cameras.config import CameraSpec, EvidenceSettings, camera_specs, registry_specs
from cameras.evidence import EvidenceStore
from cameras.gb28181.media.source import HubLocator, is_gb28181
from cameras.link import MqttLink
from cameras.onvif_link import OnvifEndpoint, OnvifLink, OnvifStreamSource
from cameras.pipeline import CameraPipeline, CommandError, OutEvent, _ms, flag_answer
from cameras.recording import metrics as recording_metrics
from cameras.recording.quota import DiskKeeper
from cameras.recording.retention import prune
from cameras.recording.settings import RecordingSettings
from cameras.recording.writer import Recorder
from cameras.tap import Fanout, TapServer, TapSettings, tap_key
from store.workers import beat

log = logging.getLogger(__name__)

TICK_S = 0.5
HEARTBEAT_S = 5.0
BASELINE_SAVE_S = 300.0

def _same_but_maintenance(a: CameraSpec, b: CameraSpec) -> bool:
    """Only the maintenance switch differs: switched on the running pipeline, no restart."""
    if a.analytics.maintenance == b.analytics.maintenance:
        return False
    return dataclasses.replace(a, analytics=a.analytics.model_copy(update={"maintenance": b.analytics.maintenance})) == b


# --------------------------------------------------------------------------- the worker
class CameraWorker:
    def __init__(self, settings, shard: int = 0, shards: int = 1, cameras: list[CameraSpec] | None = None, *,
                 db_url: str | None = None, mqtt_url: str | None = None, evidence_root: Path | None = None,
                 heartbeat_s: float = HEARTBEAT_S, job_threads: int = 4) -> None:
        self.settings = settings
        self.shard, self.shards = shard, shards
        self.name = f"cameras-{shard}"
        self._cameras = cameras
        self.db_url = db_url or settings.database_url
        self.mqtt_url = mqtt_url or settings.mqtt_url
        self.evidence_settings = EvidenceSettings()
        self.evidence_root = Path(evidence_root) if evidence_root else self.evidence_settings.root(settings.var_dir)
        self.baseline_dir = Path(settings.var_dir) / "cameras" / "baselines"
        self.heartbeat_s = heartbeat_s
        self.job_threads = job_threads
        self.pipelines: dict[str, CameraPipeline] = {}
        self.problems: dict[str, str] = {}
        self.link: MqttLink | None = None
        self.onvif: OnvifLink | None = None
        self.batcher: AnalysisBatcher | None = None
        self.gb_locate = None                                  # set with the first gb28181:// camera
        self.pool = None
        self.store: EvidenceStore | None = None
        self.tap: TapServer | None = None
        self.recorder: Recorder | None = None
        self.disk: DiskKeeper | None = None
        self.ready = threading.Event()
        self._site = None
        self._next_tele: dict[str, float] = {}
        self._told: dict[str, str] = {}          # camera → the health state its telemetry last said
        self.jobs: ThreadPoolExecutor | None = None
        self.started_at = datetime.now(UTC)

    # -- set-up ------------------------------------------------------------------------
    def _load_cameras(self) -> list[CameraSpec]:
        if self._cameras is not None:
            return list(self._cameras)
        if self.db_url:
            return self._registry_cameras()
        from config.site import load_site

        site = load_site(self.settings.site_file)
        specs, self.problems = camera_specs(site, self.shard, self.shards)
        for cam_id, problem in self.problems.items():
            log.error("camera %s not started: %s", cam_id, problem)
        return specs

    @property
    def live(self) -> bool:
        """Cameras come from the registry and follow its changes (``xlhub run``); a fixed
        list given to the constructor (tests, tools) never changes."""
        return self._cameras is None and bool(self.db_url)

    def _registry_cameras(self) -> list[CameraSpec]:
        """This shard's active cameras of the registry; credentials (by reference), the time
        zone and recording_by_tag from the site file, read again each time (its credentials
        may have been added since)."""
        from config.site import load_site
        from store.db import connect
        from store.registry import camera_rows

        try:
            self._site = load_site(self.settings.site_file)
        except Exception as exc:      # SiteError: keep what the last good read said
            if self._site is None:
                raise
            log.error("%s: site file not read again, its last good version is used: %s", self.name, exc)
        with connect(self.db_url, autocommit=True) as conn:
            rows = camera_rows(conn)
        specs, problems = registry_specs(rows, self._site, self.shard, self.shards)
        for cam_id, problem in problems.items():
            if self.problems.get(cam_id) != problem:
                log.error("camera %s not started: %s", cam_id, problem)
        self.problems = problems
        return specs

    def _new_pipeline(self, spec: CameraSpec) -> CameraPipeline:
        endpoint = source = None
        if spec.onvif_host:
            if self.onvif is None:
                self.onvif = OnvifLink(name=f"{self.name}-onvif").start()
            endpoint = OnvifEndpoint(spec.onvif_host, spec.onvif_port, spec.username, spec.password)
        if spec.onvif_only:
            h = spec.analytics.health
            source = OnvifStreamSource(spec.id, endpoint, self.onvif, stream=spec.analytics.stream,
                                       first_wait_s=min(5.0, h.open_timeout_s)).start()
        if is_gb28181(spec.url) and self.gb_locate is None:
            self.gb_locate = self._gb_locator()      # the first GB/T 28181 camera, at start or added live
        return CameraPipeline(spec, emit=self._emit, store=self.store, jobs=self.jobs,
                              baseline_dir=self.baseline_dir, source=source, onvif=endpoint, batcher=self.batcher,
                              gb_locate=self.gb_locate)

    # -- live changes (xlhub_registry) ------------------------------------------------------
    def reconcile(self) -> dict[str, list[str]]:
        """Bring the running pipelines in line with the registry: start new cameras of this
        shard, stop retired ones (or ones moved to another shard), restart a changed one
        (URL, stream, credentials, analytics, recording); maintenance alone is switched on
        the running pipeline. The other cameras are not touched. On the main thread."""
        wanted = {s.id: s for s in self._registry_cameras()}
        done: dict[str, list[str]] = {"started": [], "stopped": [], "restarted": [], "maintenance": []}
        for cid in [c for c in self.pipelines if c not in wanted]:
            self._drop_pipeline(cid)
            done["stopped"].append(cid)
        for cid, spec in wanted.items():
            running = self.pipelines.get(cid)
            if running is not None and running.spec == spec:
                continue
            if running is not None and _same_but_maintenance(running.spec, spec):
                running.spec = spec
                running.set_maintenance(spec.analytics.maintenance)
                done["maintenance"].append(cid)
                continue
            if running is not None:
                self._drop_pipeline(cid)
            self._add_pipeline(spec)
            done["restarted" if running is not None else "started"].append(cid)
        if any(done.values()):
            log.info("%s: registry changed: %s", self.name,
                     "; ".join(f"{k} {', '.join(v)}" for k, v in done.items() if v))
        return done

    def _add_pipeline(self, spec: CameraSpec) -> None:
        p = self._new_pipeline(spec)
        self.pipelines[spec.id] = p
        self._attach_recording(p)
        if p.onvif is not None and spec.onvif_events:
            self.onvif.subscribe_events(spec.id, p.onvif, p.camera_event)
        if self.link is not None:
            self.link.add_cameras([spec.id])
        self._next_tele[spec.id] = time.monotonic() + p.cfg.health.telemetry_s
        p.start()

    def _drop_pipeline(self, camera_id: str) -> None:
        p = self.pipelines.pop(camera_id)
        self._next_tele.pop(camera_id, None)
        self._told.pop(camera_id, None)
        p.stop()
        p.retired = True          # ONVIF events still in flight are not raised any more
        if self.link is not None:
            self.link.remove_cameras([camera_id])
        if self.batcher is not None:
            self.batcher.unregister(p)
        if self.onvif is not None and p.onvif is not None:
            self.onvif.forget(camera_id)
        if p.recording is not None and self.recorder is not None:
            self.recorder.remove(camera_id)      # cuts and indexes its open segment
        self.jobs.submit(self._finish_stopped, p)

    @staticmethod
    def _finish_stopped(p: CameraPipeline) -> None:
        p.reader.join(timeout=5)
        p.save_baseline()

    def run(self, stop: threading.Event) -> None:
        jobs = ThreadPoolExecutor(max_workers=self.job_threads, thread_name_prefix=f"{self.name}-job")
        self.jobs = jobs
        specs = self._load_cameras()
        if self.db_url:
            from store.db import open_pool
            self.pool = open_pool(self.db_url, min_size=1, max_size=3, name=self.name)
        self.store = EvidenceStore(self.evidence_root, self.pool)
        if self.mqtt_url:
            self.link = MqttLink(self.mqtt_url, f"xlhub-{self.name}-{os.getpid()}", [s.id for s in specs],
                                 self._on_command)
            self.link.start()
        else:
            log.warning("no MQTT broker configured: camera events are not published")
        self.batcher = AnalysisBatcher(f"{self.name}-analysis").start()
        for spec in specs:
            self.pipelines[spec.id] = self._new_pipeline(spec)
        self._start_tap()
        self._start_recorder()
        for p in self.pipelines.values():
            if p.onvif is not None and p.spec.onvif_events:
                self.onvif.subscribe_events(p.spec.id, p.onvif, p.camera_event)
        for p in self.pipelines.values():
            p.start()
        log.info("%s: %d cameras (shard %d of %d); evidence in %s", self.name, len(specs), self.shard,
                 self.shards, self.evidence_root)
        changed = threading.Event()
        if self.live:
            from store.listen import Listener
            from store.registry import REGISTRY_CHANNEL

            # Any registry notification means "look now" (the triggers' and the API's alike);
            # on (re)connect too: a change made while the connection was away is not missed.
            Listener(self.db_url, [REGISTRY_CHANNEL], lambda _c, _p: changed.set(), name=f"{self.name}-registry",
                     on_connect=changed.set).start(stop)
        self.ready.set()
        self._next_tele = {cid: time.monotonic() + p.cfg.health.telemetry_s for cid, p in self.pipelines.items()}
        next_heartbeat = 0.0
        next_sweep = time.monotonic() + 60
        next_baseline = time.monotonic() + BASELINE_SAVE_S
        try:
            while not stop.is_set():
                if changed.is_set():
                    changed.clear()
                    try:
                        self.reconcile()
                    except Exception:
                        log.exception("%s: registry change not applied (tried again at the next one)", self.name)
                now = time.monotonic()
                for cid, p in self.pipelines.items():
                    try:
                        p.tick()
                    except Exception:
                        log.exception("camera %s: tick failed", cid)
                    # on schedule, and at once when the state changes (a camera just added or
                    # put in maintenance shows so on the wall without waiting a period)
                    shown = p.health.shown_state
                    if now >= self._next_tele.get(cid, now) or shown != self._told.get(cid):
                        self._told[cid] = shown
                        self._next_tele[cid] = now + p.cfg.health.telemetry_s
                        if self.link is not None:
                            self.link.publish_telemetry(cid, p.health.telemetry())
                if now >= next_heartbeat:
                    next_heartbeat = now + self.heartbeat_s
                    self._heartbeat(ready=True)
                    self.store.flush()
                if self.disk is not None and self.disk.due(now):
                    self.disk.next_at = float("inf")          # until the check says when next
                    jobs.submit(self.disk.check)
                if now >= next_sweep:
                    next_sweep = now + self.evidence_settings.sweep_interval_s
                    jobs.submit(self._sweep)
                if now >= next_baseline:
                    next_baseline = now + BASELINE_SAVE_S
                    for p in self.pipelines.values():
                        p.save_baseline()
                stop.wait(TICK_S)
        finally:
            self._shutdown(jobs)

    def _gb_locator(self):
        """gb28181:// cameras read the gb28181 process's media tap (found by its heartbeat)."""
        key = tap_key(self.settings)
        locator = HubLocator(self.pool, key) if self.pool is not None else None
        return lambda: (locator.address() if locator else None, key)

    def _start_tap(self) -> None:
        """Serve the cameras' packets to live view (one RTSP session per camera stream)."""
        try:
            settings = TapSettings()
            if not settings.enabled:
                return
            self.tap = TapServer(settings, tap_key(self.settings), self._fanout_of, name=self.name).start()
        except Exception as exc:     # live view then pulls the cameras itself: said, not fatal
            log.error("%s: camera packets not served to live view (it pulls the cameras again): %s", self.name, exc)

    def _start_recorder(self) -> None:
        """Record the cameras whose policy says so (cameras/recording/)."""
        recorded = [p for p in self.pipelines.values() if p.spec.recording.mode != "off"]
        for p in recorded:
            self._attach_recording(p, start=False)
        if self.recorder is not None:
            self.recorder.start()
            log.info("%s: recording %d cameras into %s", self.name, len(recorded), self.recording_root)

    def _attach_recording(self, p: CameraPipeline, start: bool = True) -> None:
        """Give a camera whose policy records it its recorder (the worker's one, made at the
        first such camera: at start or when one is added live)."""
        if p.spec.recording.mode == "off":
            return
        if self.recorder is None:
            settings = RecordingSettings()
            if not settings.enabled:
                return
            self.recording_root = settings.root(self.settings.var_dir)
            self.recorder = Recorder(settings, self.recording_root, self.pool, name=self.name)
            if self.pool is not None:
                self.disk = DiskKeeper(settings, self.recording_root, self.pool, [], name=self.name)
            if start:
                self.recorder.start()
        p.recording = self.recorder.camera(p.spec.id, p.spec.stream, p.spec.recording, p.ring, p.spec.tz)
        p.fanout.listeners += (p.recording,)
        if self.disk is not None and p.spec.id not in self.disk.cameras:
            self.disk.cameras.append(p.spec.id)

    def _fanout_of(self, camera_id: str) -> Fanout | None:
        pipeline = self.pipelines.get(camera_id)
        return pipeline.fanout if pipeline is not None else None

    def _shutdown(self, jobs: ThreadPoolExecutor) -> None:
        if self.tap is not None:
            self.tap.stop()             # live view falls back to its own pull at once
        for p in self.pipelines.values():
            p.stop()
        for p in self.pipelines.values():
            p.reader.join(timeout=0.5)
        if self.recorder is not None:
            self.recorder.stop()        # cuts and indexes every open segment
        if self.batcher is not None:
            self.batcher.stop()         # analyses what the readers handed over, then ends
        for p in self.pipelines.values():
            p.save_baseline()
        if self.onvif is not None:
            self.onvif.stop()
        jobs.shutdown(wait=True, cancel_futures=True)
        self._heartbeat(ready=False)
        if self.link is not None:
            self.link.stop()
        if self.pool is not None:
            self.pool.close()
        log.info("%s stopped", self.name)

    # -- outputs -------------------------------------------------------------------------
    def _emit(self, ev: OutEvent) -> None:
        log.info("camera %s: %s %s", ev.camera_id, ev.type, ev.id)
        if self.link is not None:
            self.link.publish_event(ev.camera_id, ev.type, ev.body())

    def _sweep(self) -> None:
        try:
            n = self.store.sweep(list(self.pipelines), self.evidence_settings.retention_days)
            if n:
                log.info("evidence retention: %d files removed", n)
        except Exception as exc:
            log.warning("evidence retention sweep failed: %s", type(exc).__name__)
        if self.recorder is not None and self.pool is not None:
            try:
                prune(self.pool, self.recorder.root, {cid: p.spec.recording for cid, p in self.pipelines.items()},
                      self.recorder.settings.retention_days, self.recorder.settings.case_hold_days)
            except Exception as exc:
                log.warning("recording retention sweep failed: %s", type(exc).__name__)

    def status(self) -> dict:
        states: dict[str, int] = {}
        for p in self.pipelines.values():
            states[p.health.shown_state] = states.get(p.health.shown_state, 0) + 1
        out = {"ready": self.ready.is_set(), "cameras": len(self.pipelines), "states": states,
               "shard": self.shard, "shards": self.shards, "problems": self.problems,
               "mqtt": bool(self.link and self.link.connected.is_set())}
        if self.recorder is not None:
            out["recording"] = rec = self.recorder.status()
            if self.disk is not None:
                disk = self.disk.state
                rec["disk"] = disk.as_dict()
                now_free = self.disk.free_now()           # one statvfs: fresher than the last check
                if now_free is not None:
                    rec["disk"]["free"], rec["disk"]["total"] = now_free
                for cam, oldest in disk.oldest.items():
                    if cam in rec["per_camera"]:
                        rec["per_camera"][cam]["oldest"] = oldest
        if self.onvif is not None and self.onvif.subscribers:
            out["onvif_events"] = self.onvif.events_status()
        if self.tap is not None:
            out["tap"] = self.tap.address
            out["tap_consumers"] = self.tap.consumers
        if self.batcher is not None:
            out["analysis"] = {"analysed": self.batcher.analysed, "pending": self.batcher.pending,
                               "dropped": self.batcher.dropped, "failures": self.batcher.failures}
        sources = [p.source for p in self.pipelines.values() if p.source is not None]
        if sources:
            # ONVIF-only cameras still without a stream URI, with the reason (never a credential)
            out["onvif_unresolved"] = {s.camera_id: s.last_error or "resolving" for s in sources if s.uri is None}
        return out

    def _heartbeat(self, ready: bool) -> None:
        if self.pool is None:
            return
        detail = self.status()
        detail["ready"] = ready
        if "recording" in detail:
            recording_metrics.publish(detail["recording"])
        try:
            with self.pool.connection(timeout=3) as conn:
                beat(conn, self.name, "cameras", self.started_at, detail)
        except Exception as exc:
            log.warning("%s: heartbeat not written: %s", self.name, type(exc).__name__)

    # -- commands --------------------------------------------------------------------------
    def _on_command(self, camera_id: str, cmd: Command, msg: mqtt.MQTTMessage) -> None:
        """On the MQTT thread: hand the work to a job thread at once."""
        pipeline = self.pipelines.get(camera_id)
        if pipeline is None:
            return      # another shard's camera (shared subscriptions) or a retired one
        if isinstance(cmd, PtzCommand):
            if str(pipeline.spec.url or "").startswith("gb28181://"):
                return      # GB/T 28181 channels are steered by the gb28181 process (DeviceControl)
            # Straight to the ONVIF loop, in arrival order (a job pool could let a stop overtake its move).
            self._ptz(pipeline, cmd, msg)
            return
        self.jobs.submit(self._command, pipeline, cmd, msg)

    def _ptz(self, p: CameraPipeline, cmd: PtzCommand, msg: mqtt.MQTTMessage) -> None:
        link, op = self.link, cmd.op
        if p.onvif is None or self.onvif is None:
            link.reply(p.spec.id, cmd.name, msg, cmd, "failed", "the camera has no ONVIF address in the site file",
                       reason="no onvif")
            return
        args = {"move": {"pan": cmd.pan, "tilt": cmd.tilt, "zoom": cmd.zoom, "timeout": cmd.timeout},
                "goto": {"token": cmd.token}}.get(op, {})

        def done(future) -> None:
            from cameras.onvif import OnvifError
            try:
                result = future.result()
            except OnvifError as exc:
                link.reply(p.spec.id, cmd.name, msg, cmd, "failed", str(exc), reason=exc.reason, op=op)
            except ValueError as exc:
                link.reply(p.spec.id, cmd.name, msg, cmd, "rejected", str(exc), reason="invalid", op=op)
            except Exception as exc:
                log.error("camera %s: ptz %s failed: %s", p.spec.id, op, type(exc).__name__)
                link.reply(p.spec.id, cmd.name, msg, cmd, "failed", f"internal error ({type(exc).__name__})", op=op)
            else:
                link.reply(p.spec.id, cmd.name, msg, cmd, "finished", op=op, **result)

        log.info("camera %s: ptz %s%s", p.spec.id, op, f" by {cmd.by}" if cmd.by else "")
        self.onvif.submit(self.onvif.ptz(p.spec.id, p.onvif, op, args)).add_done_callback(done)

    def _command(self, p: CameraPipeline, cmd: Command, msg: mqtt.MQTTMessage) -> None:
        link, name = self.link, cmd.name
        try:
            if isinstance(cmd, FlagCommand):
                event = p.flag(cmd)
                link.reply(p.spec.id, name, msg, cmd, "finished", **flag_answer(event))
            elif isinstance(cmd, SnapshotCommand):
                try:
                    data, wall = p.latest_jpeg()
                except CommandError:
                    if p.source is None or not p.source.snapshot_uri:
                        raise
                    # No picture from the stream (yet): the camera's own ONVIF snapshot.
                    try:
                        data, wall = p.source.fetch_snapshot(), time.time()
                    except OSError as exc:
                        raise CommandError(f"no picture from the stream, and {exc}") from None
                link.reply(p.spec.id, name, msg, cmd, "finished", frame_at=_ms(wall),
                           state=p.health.shown_state, jpeg_b64=base64.b64encode(data).decode("ascii"))
            elif isinstance(cmd, MaintenanceCommand):
                p.set_maintenance(cmd.on)
                link.reply(p.spec.id, name, msg, cmd, "finished", maintenance=cmd.on)
            elif isinstance(cmd, RebaselineCommand):
                p.rebaseline("requested")
                link.reply(p.spec.id, name, msg, cmd, "finished")
            else:
                link.reply(p.spec.id, name, msg, cmd, "rejected", f"a camera does not carry out {name!r}")
        except CommandError as exc:
            link.reply(p.spec.id, name, msg, cmd, "failed", str(exc))
        except Exception as exc:
            log.exception("camera %s: command %s failed", p.spec.id, name)
            link.reply(p.spec.id, name, msg, cmd, "failed", f"internal error ({type(exc).__name__})")
