"""``xlhub recordings verify [--camera ID] [--since TIME] [--json]``: recompute the hash chain
of the recordings index and every kept file's SHA-256 (cameras/recording/chain.py); exit 1
and name each problem when the footage or its index was removed, replaced or edited."""
from __future__ import annotations

import json
import sys
from datetime import datetime


def _since(text: str) -> datetime:
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise SystemExit(f"--since {text!r}: expected an ISO time such as 2026-12-07T08:00+08:00") from None
    if t.tzinfo is None:
        raise SystemExit(f"--since {text!r}: give the time zone (e.g. +08:00)")
    return t


def cmd_recordings(args, settings, database) -> int:
    from cameras.recording.chain import verify
    from cameras.recording.settings import RecordingSettings
    from store.db import connect

    root = RecordingSettings().root(settings.var_dir)
    with database(settings) as url, connect(url) as conn:
        report = verify(conn, root, camera_id=args.camera, since=_since(args.since) if args.since else None,
                        check_files=not args.no_files)
    if args.json:
        print(json.dumps(report.as_dict(), ensure_ascii=False, indent=1))
    elif report.ok:
        print(f"recordings OK: {report.segments} segments of {report.cameras} cameras, "
              f"{report.files_checked} files checked, {report.pruned} pruned by retention")
    else:
        for p in report.problems:
            print(f"{p.camera_id} seq {p.seq}: {p.text}", file=sys.stderr)
        print(f"recordings: {len(report.problems)} problems in {report.segments} segments", file=sys.stderr)
    return 0 if report.ok else 1


def register(sub, database) -> None:
    rec = sub.add_parser("recordings", help="camera recordings (录像)")
    rsub = rec.add_subparsers(dest="action", required=True)
    ver = rsub.add_parser("verify", help="verify the recordings' hash chain and files")
    ver.add_argument("--camera", help="one camera's footage only")
    ver.add_argument("--since", help="from this time on (ISO, with its time zone)")
    ver.add_argument("--no-files", action="store_true", help="the index's chain only, not the files' hashes")
    ver.add_argument("--json", action="store_true", help="the report as JSON")
    rec.set_defaults(func=lambda args, settings: cmd_recordings(args, settings, database))
