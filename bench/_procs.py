"""The hub's processes as the benchmarks see them (from /proc): which process is which,
their descendants, free loopback ports. Shared by bench/soak and bench/idle."""
from __future__ import annotations

import socket
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_children(pid: int) -> list[int]:
    out = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                out += [int(p) for p in (task / "children").read_text().split()]
            except OSError:
                pass
    except OSError:
        pass
    return out


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = proc_children(p)
        out += kids
        todo += kids
    return out


def cmd(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def process_name(pid: int, argv: list[str]) -> str | None:
    if "hub.process" in argv:
        i = argv.index("hub.process")
        name = argv[i + 1] if len(argv) > i + 1 else "?"
        if name == "cameras" and "--shard" in argv:
            name = f"cameras-{argv[argv.index('--shard') + 1]}"
        return name
    if "hub.cli" in argv:
        return "supervisor"
    if argv and argv[0].endswith("/mosquitto"):
        return "mosquitto"
    if argv and ("postgres" in argv[0]):
        return "postgresql"
    return None


def named_tree(root: int) -> dict[int, str]:
    """Every process under ``root`` with a name; one without a name of its own (the demo's
    GStreamer server under system python3, a PostgreSQL backend) takes its parent's."""
    out: dict[int, str] = {}
    todo = [(root, None)]
    while todo:
        pid, inherited = todo.pop()
        name = process_name(pid, cmd(pid)) or inherited
        if name is not None:
            out[pid] = name
        todo += [(kid, name) for kid in proc_children(pid)]
    return out
