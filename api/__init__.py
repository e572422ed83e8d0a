"""The hub's HTTP face (FastAPI): REST, health and metrics, the SSE feed of alarms and
cases, WebRTC live video, Open311, and the web UI. Every call is authenticated
(api/deps.authenticate) and scoped to the caller's node of the grid tree; every mutating
request and sensitive read is audited (api/audit.py).

Talks to: store/ and the domain packages (alerts/, devices/, cameras/ settings and evidence)
in-process, the camera workers over MQTT (request/response: flag, snapshot, PTZ), cameras
over RTSP for live view. Downstream of everything: nothing imports from api/. README.md
has the map.
"""
