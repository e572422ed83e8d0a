"""The hub's HTTP face (FastAPI): REST, health and metrics, and later the WebSocket feed,
WebRTC signalling and the web UI.  Every call is authenticated and scoped to the caller's
node of the grid tree; every mutating request and sensitive read is audited.

Talks to: store/ (through its services), the MQTT broker (readiness, commands).
Downstream of everything: nothing imports from api/.
"""
