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
from cameras.gb28181.media.hub import MediaHub
from cameras.gb28181.passwords import GbPasswords
from cameras.gb28181.server import GbServer
from cameras.gb28181.session import InviteFailed, Transport
from cameras.gb28181.settings import GbSettings
from cameras.link import MqttLink
from cameras.tap import tap_key
from bus.topics import TOPIC_ROOT
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
        # A device that registered over TCP usually sits behind NAT: it connects out to us
        # for the media too (tcp-passive on our side); otherwise the media settings decide.
        state = server.devices.get(device_id)
        return "tcp-passive" if state is not None and state.peer.transport == "tcp" else None

    media = MediaHub(server, tap_key(settings), domain_id=site.gb28181.domain, transport_of=transport_of).start()

    def detail() -> dict:
        online = sum(1 for d in server.devices.values() if d.online)
        return {**media.status(), "ready": True, "registrations": online, "devices": len(server.devices),
                "media_sessions": len(server.dialogs), "port": server.port,
                "refused": dict(server.endpoint.refused) if server.endpoint else {}}

    beat = Heartbeat(settings.database_url, "gb28181", "gb28181", detail)
    beat.start()
    stop.wait()
    beat.stop()
    media.stop()
    if bridge.link is not None:
        bridge.link.stop()
    server.stop()
