"""Simulated RTSP cameras (GstRtspServer child process + numpy scenes) for the demo site, tests and benchmarks."""
