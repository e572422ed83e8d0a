"""Field devices in the API (views.py): state, telemetry, tracks, events, commands, door
unlock, broadcasts and device media, scoped to the caller's part of the grid tree."""
