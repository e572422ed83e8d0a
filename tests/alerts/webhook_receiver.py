"""A stand-in for an external case system, run as its own process by the tests:

    python tests/alerts/webhook_receiver.py --port P --secret-env NAME --log FILE
           [--hub URL --token-env NAME] [--delay SECONDS]

- POST /hook: verifies the HMAC-SHA256 signature (its own implementation, not the hub's),
  refuses a bad one with 401, and appends one JSON line per delivery to FILE with
  ``duplicate`` set when its Idempotency-Key was seen before (the key set survives a
  restart: it is read back from FILE).  Answers 200 either way — a receiver that already
  has a message says so, and the hub moves on.  With ``--delay`` it answers that many
  seconds after recording (a slow case system: a sender killed meanwhile leaves messages
  the receiver has but the hub does not know were delivered).
- POST /status: posts a status change back to the hub (``--hub`` + ``/api/alerts/inbound/
  <system>``) signed the same way with the API token from ``--token-env``; answers with
  the hub's status and body.
- GET /health: 200.
"""
from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def sign(secret: bytes, ts: int, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, f"{ts}.".encode() + body, hashlib.sha256).hexdigest()


class Receiver:
    def __init__(self, args) -> None:
        self.args = args
        self.secret = os.environ[args.secret_env].encode()
        self.lock = threading.Lock()
        self.seen: set[str] = set()
        if os.path.exists(args.log):
            with open(args.log, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        self.seen.add(json.loads(line)["key"])

    def record(self, entry: dict) -> None:
        with self.lock:
            entry["duplicate"] = entry["key"] in self.seen
            self.seen.add(entry["key"])
            with open(self.args.log, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry, ensure_ascii=False) + "\n")
                f.flush()


def handler_for(rx: Receiver):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def _answer(self, code: int, body: dict) -> None:
            data = json.dumps(body, ensure_ascii=False).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass            # the sender went away (killed) before the answer

        def do_GET(self) -> None:
            self._answer(200, {"ok": True})

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path == "/hook":
                ts = self.headers.get("X-Xlhub-Timestamp") or "0"
                expected = sign(rx.secret, int(ts) if ts.isdigit() else 0, body)
                if not hmac.compare_digest(expected, self.headers.get("X-Xlhub-Signature") or ""):
                    self._answer(401, {"error": "bad signature"})
                    return
                payload = json.loads(body)
                rx.record({"key": self.headers["Idempotency-Key"], "event": self.headers["X-Xlhub-Event"],
                           "case_id": payload["case"]["id"], "seq": payload["sequence"],
                           "received_at": time.time(), "payload": payload})
                if rx.args.delay:
                    time.sleep(rx.args.delay)
                self._answer(200, {"received": True})
            elif self.path == "/status":
                self._answer(*post_back(rx, body))
            else:
                self._answer(404, {"error": "no such path"})

    return Handler


def post_back(rx: Receiver, body: bytes) -> tuple[int, dict]:
    request = json.loads(body)
    system = request.pop("system")
    data = json.dumps(request, ensure_ascii=False).encode()
    ts = int(time.time())
    req = urllib.request.Request(
        f"{rx.args.hub}/api/alerts/inbound/{system}", data=data, method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {os.environ[rx.args.token_env]}",
                 "X-Xlhub-Timestamp": str(ts), "X-Xlhub-Signature": sign(rx.secret, ts, data)})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return 200, {"hub_status": r.status, "hub": json.loads(r.read() or b"{}")}
    except urllib.error.HTTPError as e:
        return 200, {"hub_status": e.code, "hub": json.loads(e.read() or b"{}")}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--secret-env", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--hub")
    p.add_argument("--token-env")
    p.add_argument("--delay", type=float, default=0.0, help="seconds before answering a delivery")
    args = p.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler_for(Receiver(args)))
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
