"""The data flows one way: sources (cameras/, devices/) → ingest/ → alerts/ → api/, with
config/ and store/ as shared ground under all of them, and hub/ (the CLI and supervisor)
on top. A module never imports from a layer downstream of it; this test reads every import
(also the ones inside functions) so a new one cannot slip in."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RANK = {"config": 0, "store": 0, "cameras": 1, "devices": 1, "ingest": 2, "alerts": 3, "api": 4, "hub": 5}


def imported_packages(path: Path) -> set[tuple[str, int]]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {(alias.name.split(".")[0], node.lineno) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.module.split(".")[0], node.lineno))
    return found


def test_no_module_imports_from_a_layer_downstream_of_it():
    wrong = []
    for package, rank in RANK.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            for target, line in imported_packages(path):
                if target in RANK and RANK[target] > rank:
                    wrong.append(f"{path.relative_to(ROOT)}:{line} imports {target} (downstream of {package})")
    assert not wrong, "\n".join(wrong)

