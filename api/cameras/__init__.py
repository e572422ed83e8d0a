"""Camera endpoints: a video supervisor's flag, live snapshots and evidence downloads."""
