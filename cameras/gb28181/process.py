"""The ``gb28181`` child process (``python -m hub.process gb28181``): the SIP server, its
heartbeat (``worker_heartbeats``: registrations), alarms published on the bus as the
cameras' events (the camera workers' way: cameras/link.py), and PTZ commands of gb28181
cameras carried out by DeviceControl (the camera workers leave those to this process).

The media side (cameras/gb28181/media) is constructed with this process's server as its
Inviter at the one marked place below."""
from __future__ import annotations

import logging
import threading
import time

import paho.mqtt.client as mqtt

from bus.commands import Command, PtzCommand
from cameras.gb28181 import manscdp, registry
from cameras.gb28181.cascade import Cascade
from cameras.gb28181.cascade_catalog import CatalogItem
from cameras.gb28181.media.hub import MediaHub, gb_url, parse_gb_url
from cameras.gb28181.passwords import GbPasswords
from cameras.gb28181.playback import DevicePlayback
from cameras.gb28181.server import GbServer
from cameras.gb28181.session import InviteFailed, Transport
from cameras.gb28181.settings import GbSettings
from cameras.link import MqttLink
from cameras.tap import tap_key
from bus.client import mqtt_client, start as mqtt_start, stop as mqtt_stop
from bus.topics import TOPIC_ROOT, parse_topic
from store.db import connect
from store.workers import Heartbeat

log = logging.getLogger(__name__)


class GbLink(MqttLink):
    """The camera workers' link, subscribed to the PTZ commands of every gb28181 camera."""

    def on_connected(self, client, flags) -> None:
        client.subscribe(f"{TOPIC_ROOT}/camera/+/cmd/ptz", qos=1)
        log.info("MQTT connected; PTZ commands of GB/T 28181 cameras subscribed")


class PtzBridge:
    def __init__(self, server: GbServer, db_url: str) -> None:
        self.server, self.db_url = server, db_url
        self.link: GbLink | None = None
        self._stops: dict[str, threading.Timer] = {}

    def on_command(self, camera_id: str, cmd: Command, msg: mqtt.MQTTMessage) -> None:
        if not camera_id.startswith(registry.CAMERA_PREFIX) or not isinstance(cmd, PtzCommand):
            return
        threading.Thread(target=self._ptz, args=(camera_id, cmd, msg), daemon=True).start()

    def _ptz(self, camera_id: str, cmd: PtzCommand, msg) -> None:
        link = self.link
        with connect(self.db_url) as conn:
            where = registry.channel_of_camera(conn, camera_id)
        if where is None:
            link.reply(camera_id, cmd.name, msg, cmd, "failed", "该通道已不在设备目录中", reason="retired", op=cmd.op)
            return
        device_id, channel_id = where
        try:
            if cmd.op == "move":
                self.server.ptz(device_id, channel_id, manscdp.ptz_bytes(cmd.pan, cmd.tilt, cmd.zoom))
                old = self._stops.pop(camera_id, None)
                if old:
                    old.cancel()
                timer = threading.Timer(cmd.timeout, self._stop, (device_id, channel_id))
                self._stops[camera_id] = timer
                timer.start()
            elif cmd.op == "stop":
                self.server.ptz(device_id, channel_id, manscdp.ptz_bytes(0, 0, 0))
            elif cmd.op == "presets":
                # GB/T 28181-2016 has no preset query (PresetQuery is 2022's): presets are
                # numbers 1–255 the operator knows; the list is empty, goto by number works
                link.reply(camera_id, cmd.name, msg, cmd, "finished", op=cmd.op, presets=[])
                return
            elif cmd.op == "goto" and cmd.token and cmd.token.isdigit() and 1 <= int(cmd.token) <= 255:
                self.server.ptz(device_id, channel_id, manscdp.ptz_preset(0x82, int(cmd.token)))
            else:
                link.reply(camera_id, cmd.name, msg, cmd, "rejected",
                           "GB/T 28181 摄像机的预置位是 1–255 的编号", reason="invalid", op=cmd.op)
                return
        except InviteFailed as exc:
            link.reply(camera_id, cmd.name, msg, cmd, "failed", exc.reason, reason="device", op=cmd.op)
            return
        link.reply(camera_id, cmd.name, msg, cmd, "finished", op=cmd.op)

    def _stop(self, device_id: str, channel_id: str) -> None:
        try:
            self.server.ptz(device_id, channel_id, manscdp.ptz_bytes(0, 0, 0))
        except InviteFailed:
            pass


def media_transport(gb, state, device_id: str) -> Transport | None:
    """How a device's media comes (live and playback): the site file's ``media_transport`` for it;
    else tcp-passive for a device that registered over TCP (it usually sits behind NAT and connects
    out to us for the media too); else None — the media settings' default decides."""
    if device_id in gb.media_transport:
        return gb.media_transport[device_id]
    return "tcp-passive" if state is not None and state.peer.transport == "tcp" else None

def _upstream_login(site, up) -> tuple[str, str]:
    """(username, password) of an upper platform: the site file's credentials entry it names."""
    from config.site import resolve_password

    cred = site.credentials.get(up.credentials)
    if cred is None:
        raise RuntimeError(f"credentials '{up.credentials}' not in the site file")
    return cred.username, resolve_password(cred, up.credentials)


def _camera_tap(db_url: str, site, media: MediaHub, item: CatalogItem) -> tuple[str, str, str, str] | None:
    """Where the cascade takes a camera's packets: the MediaHub's tap for a GB/T 28181 camera,
    else the tap of the live camera worker that reads it (its heartbeat), with the stream and
    URL that worker reads (the one rule the workers build their cameras with)."""
    from cameras.config import registry_specs, shard_of
    from store.registry import CAMERA_SQL
    from store.workers import heartbeats

    if item.url and item.url.startswith("gb28181://"):
        device_id, channel_id = parse_gb_url(item.url)
        return media.address, f"{device_id}/{channel_id}", "main", gb_url(device_id, channel_id)
    with connect(db_url) as conn:
        rows = conn.execute(CAMERA_SQL + " WHERE c.id = %s", (item.camera_id,)).fetchall()
        beats = heartbeats(conn, "cameras")
    specs, _ = registry_specs(rows, site)
    if not specs:
        return None
    spec = specs[0]
    for beat in beats:
        detail = beat["detail"] or {}
        if beat["age_s"] is None or beat["age_s"] > 15 or not detail.get("tap"):
            continue
        if "shards" in detail and shard_of(spec.id, int(detail["shards"])) != int(detail.get("shard", 0)):
            continue
        return detail["tap"], spec.id, spec.stream, "" if spec.onvif_only else spec.url
    return None


def _forward_alarms(mqtt_url: str, cascade: Cascade):
    """The cameras' events on the bus, sent upward (each in a thread: a MESSAGE waits for its answer)."""
    import json

    client = mqtt_client(mqtt_url, f"xlhub-gb28181-cascade-{int(time.time())}")

    def on_connect(c, userdata, flags, reason_code, properties=None):
        c.subscribe(f"{TOPIC_ROOT}/camera/+/evt/#", qos=1)

    def on_message(c, userdata, msg):
        try:
            topic = parse_topic(msg.topic)
            body = json.loads(msg.payload)
        except Exception as exc:
            log.info("cascade: event on %s not forwarded: %s", msg.topic, exc)
            return
        threading.Thread(target=_forward_one, args=(cascade, topic.source_id, topic.event_type, body),
                         daemon=True).start()

    client.on_connect, client.on_message = on_connect, on_message
    mqtt_start(client)
    return client


def _forward_one(cascade: Cascade, camera_id: str, event_type: str, body: dict) -> None:
    try:
        cascade.forward_alarm(camera_id, event_type, body if isinstance(body, dict) else {})
    except Exception as exc:
        log.warning("cascade: alarm of %s (%s) not forwarded: %s", camera_id, event_type, exc)


def run_gb28181(settings, stop: threading.Event) -> None:
    from config.site import load_site

    site = load_site(settings.site_file)
    if site.gb28181 is None:
        log.warning("the site file has no gb28181 section: nothing to serve")
        stop.wait()
        return
    gb_settings = GbSettings()
    bridge: PtzBridge | None = None

    def on_event(camera_id: str, event_type: str, body: dict) -> None:
        if bridge is not None and bridge.link is not None:
            bridge.link.publish_event(camera_id, event_type, body)

    server = GbServer(site.gb28181, gb_settings, settings.database_url, GbPasswords.for_settings(settings),
                      root_code=site.grid.code, on_event=on_event)
    server.start()
    bridge = PtzBridge(server, settings.database_url)
    if settings.mqtt_url:
        bridge.link = GbLink(settings.mqtt_url, f"xlhub-gb28181-{int(time.time())}", [], bridge.on_command)
        bridge.link.start()

    # The media side meets the signalling here: one on-demand RTP/PS session per channel,
    # served to the camera workers (and the cascade) on the camera tap protocol.
    def transport_of(device_id: str, channel_id: str) -> Transport | None:
        return media_transport(site.gb28181, server.devices.get(device_id), device_id)

    media = MediaHub(server, tap_key(settings), domain_id=site.gb28181.domain, transport_of=transport_of).start()
    # Device playback (NVR footage): RecordInfo and s=Playback for the API, on loopback.
    playback = DevicePlayback(server, tap_key(settings), media_host=media.settings.host,
                              media_advertise=media.settings.advertise, transport_of=media.transport_for).start()

    cascade = alarms = None
    if site.gb28181.upstream:                     # cascade up (级联): the hub as a lower platform
        cascade = Cascade(site.gb28181, gb_settings, settings.database_url,
                          password_of=lambda up: _upstream_login(site, up),
                          camera_tap=lambda item: _camera_tap(settings.database_url, site, media, item),
                          tap_key=tap_key(settings)).start()
        if settings.mqtt_url:
            alarms = _forward_alarms(settings.mqtt_url, cascade)

    def detail() -> dict:
        out = {**media.status(), "ready": True, "registrations": sum(1 for d in server.devices.values() if d.online),
               "devices": len(server.devices), "dialogs": len(server.dialogs), "port": server.port,
               "playback": playback.address, "playbacks": playback.active,
               "refused": dict(server.endpoint.refused) if server.endpoint else {}}
        if cascade is not None:
            out["cascade"] = cascade.status()
        return out

    beat = Heartbeat(settings.database_url, "gb28181", "gb28181", detail)
    beat.start()
    stop.wait()
    beat.stop()
    playback.stop()
    if alarms is not None:
        mqtt_stop(alarms)
    if cascade is not None:
        cascade.stop()
    media.stop()
    if bridge.link is not None:
        bridge.link.stop()
    server.stop()
