"""Broadcasts to village speakers (村村响): audio (TTS or upload or URL, audio.py), the
request / fan-out / receipts / report (service.py).  The devices worker dispatches due
broadcasts and follows the speakers' receipts; see README.md."""
from devices.broadcast.audio import AudioError, AudioFile, Voice, save_upload, synthesize
from devices.broadcast.service import (FINAL_STATES, KIND_LABELS, LATE_PHASES, RECEIPT_LABELS, STATE_LABELS,
                                     BroadcastRequest, build_report, create_broadcast, stop_broadcast, tier,
                                     with_speech)

__all__ = ["FINAL_STATES", "KIND_LABELS", "LATE_PHASES", "RECEIPT_LABELS", "STATE_LABELS", "AudioError", "AudioFile",
           "BroadcastRequest", "Voice", "build_report", "create_broadcast", "save_upload", "stop_broadcast",
           "synthesize", "tier", "with_speech"]
