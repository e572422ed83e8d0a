"""Recorded footage in the API (录像回放): timeline, playback stream, exact frames, flags from playback."""
