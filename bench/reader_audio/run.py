"""Benchmark: what a camera's audio costs the reader when nothing keeps it (ratios in one run).

A camera (GStreamer's RTSP server, the tests' peer: H.264 + a sine as AAC or G.711 A-law) read
by ``StreamReader`` keyframe-only, as the worker reads an unrecorded camera, in alternating
windows: the audio set up and handed to the sink (what a recorded camera with sound costs, and
about what an unrecorded one cost before: FFmpeg received the audio's RTP even when only the
video was demuxed) against video only (``allowed_media_types=video``, what
cameras/rtsp.py now asks unless the recorder keeps the audio). Reader-thread CPU per second of
stream, medians of the windows, and their ratio.

    .venv/bin/python bench/reader_audio/run.py [--audio aac|alaw] [--seconds 8] [--rounds 4]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cameras.reader import QuietSink  # noqa: E402


class Sink(QuietSink):
    def __init__(self, audio: bool) -> None:
        self.audio, self.video, self.heard, self.cpu = audio, 0, 0, 0.0

    def wants_audio(self) -> bool:
        return self.audio

    def on_open(self, segment, open_s):
        self.t0 = time.thread_time()

    def on_packet(self, packet, wall, key, segment, mono):
        self.video += 1
        self.cpu = time.thread_time() - self.t0      # the reader thread's own CPU so far

    def on_audio(self, packet, wall, segment):
        self.heard += 1



def window(url: str, audio: bool, seconds: float) -> Sink:
    from cameras.reader import StreamReader
    sink = Sink(audio)
    reader = StreamReader("bench-audio", url, sink)
    thread = threading.Thread(target=reader.read_once, daemon=True)
    thread.start()
    time.sleep(seconds)
    reader.stop()
    thread.join(10)
    return sink


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--audio", choices=("aac", "alaw"), default="aac")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    from tests.cameras.peers import GstPeer
    with GstPeer(audio=args.audio) as peer:
        got: dict[bool, list[float]] = {True: [], False: []}
        heard = 0
        for r in range(args.rounds):
            for audio in ((True, False) if r % 2 == 0 else (False, True)):
                s = window(peer.url(), audio, args.seconds)
                got[audio].append(s.cpu / args.seconds * 1000)
                heard += s.heard
                print(f"round {r + 1}: audio {'set up ' if audio else 'not set up'}: {got[audio][-1]:.2f} ms/s "
                      f"({s.video} video packets, {s.heard} audio packets)", flush=True)
    on, off = statistics.median(got[True]), statistics.median(got[False])
    print(f"\n{args.audio}: reader thread, median of {args.rounds} windows of {args.seconds:g} s")
    print(f"  audio set up (and received): {on:.2f} ms/s")
    print(f"  video only (baseline):       {off:.2f} ms/s")
    print(f"  ratio: {on / off:.2f}x — an unrecorded camera with sound now costs {off / on:.0%} of what it did")
    assert heard > 0, "the peer sent no audio: the comparison would mean nothing"


if __name__ == "__main__":
    main()
