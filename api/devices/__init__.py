"""Field devices in the API, one router per resource: state.py (latest state, telemetry,
tracks, events), registry.py (devices added, updated, decommissioned), commands.py
(commands, their status, door unlock), broadcasts.py, uploads.py (the devices' own
endpoints: broadcast audio, drone media), with common.py's scope checks and audit; all
scoped to the caller's part of the grid tree. The queries are the devices package's."""
