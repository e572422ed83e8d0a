"""Recording (录像): every camera's stream kept on disk by remux, indexed, chained.

    reader ─▶ Fanout ─▶ CameraRecorder (policy: always | events | schedule | off)
                             │ (one Recorder thread per camera worker: file I/O off the readers)
                             ▼
                    <root>/<camera>/<yyyymmdd>/<start ms>.mp4   fragmented MP4, the camera's own codec
                             │
                             ▼
                    recording_segments (index + hash chain, store/migrations 0016)

- ``settings.py``: ``RecordingSettings`` (``XLHUB_RECORDING_*``): where, segment length,
  default retention; the per-camera policy is the site file's (config/camera_recording.py).
- ``writer.py``: the recorder thread and one ``CameraRecorder`` per camera.
- ``fmp4.py``: H.264/H.265 fragments written from the packets (no muxer per packet), FFmpeg's
  layout byte for byte, hashed as written.
- ``chain.py``: the link of each segment, and ``verify``.
- ``export.py``: a range of one camera to one MP4 by remux, with its provenance (segments'
  seq and links, gaps) and ``check`` of an export against the index; the API runs it
  (api/recordings/export.py).
- ``holds.py``: ranges kept past retention and the quota — a case's evidence or a legal hold —
  each with its own end (``expires_at``; a case's is set by alerts/ when the case finishes:
  ``XLHUB_RECORDING_CASE_HOLD_DAYS`` later); retention.py calls ``release_expired``.
- ``playback.py``: coverage and gaps, a playback stream from any moment (remux), the exact
  frame at a moment, a clip — what api/recordings/ serves.

Why fragmented MP4 (``frag_keyframe+empty_moov+default_base_moof``): every segment is a file a
browser plays as it is (progressive or Media Source) and a person can hand over; a fragment
starts at each keyframe, so a worker killed mid-segment leaves a file readable up to its last
fragment (it stays in ``.partial/``, is not indexed and is dropped at the next start: at most
the open segment is lost). The SHA-256 is taken from the bytes as they are written (fmp4.py;
for other codecs from the finished file: ``writer.SINK``; docs/recording-bench.md).
MPEG-TS would survive a crash as well but no browser plays it without a JavaScript demuxer.
"""
