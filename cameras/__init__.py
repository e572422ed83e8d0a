"""Cameras: RTSP reading that never hangs, health watch, tamper and motion analytics, and
evidence (snapshots and clips), in worker processes that each own a shard of the cameras
and publish on the MQTT bus like any field device. See cameras/README.md."""
