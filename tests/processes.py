"""Child processes of the tests (servers, peers, the hub): stopped the same way everywhere;
and workers run on a thread for the length of a block."""
from __future__ import annotations

import contextlib
import subprocess
import threading


def stop(proc: subprocess.Popen | None, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; nothing if it has already ended."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


@contextlib.contextmanager
def running(worker, ready_s: float = 15.0):
    """A worker (cameras.worker.CameraWorker and the like: ``run(stop)``, ``ready``) on a thread
    of its own until the block ends."""
    stop_event = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop_event,), daemon=True)
    thread.start()
    try:
        assert worker.ready.wait(ready_s), f"{type(worker).__name__} not ready within {ready_s:g} s"
        yield worker
    finally:
        stop_event.set()
        thread.join(20)
