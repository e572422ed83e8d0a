"""Vendor dialects: devices that do not speak the hub's own MQTT contract (docs/mqtt.md),
translated both ways by one bridge process (bridge.py) — DJI Cloud API docks (dji.py) and
the site file's mapped vendor models (mapped.py, config/dialects.py). README.md there."""
