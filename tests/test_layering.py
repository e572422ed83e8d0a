"""Data flows one way: sources (cameras/, devices/) → ingest/ → alerts/ → api/, on shared
ground (config/, bus/, store/), with hub/ (the CLI and supervisor) on top of everything.
The allowed arrows are declared below — the picture in docs/architecture.md — and any
other import between the hub's packages fails, also one between packages of the same rank
(config → store, devices → cameras) and the imports inside functions. A new top-level
package must be declared before it can be imported."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# package → the packages it may import.
ALLOWED: dict[str, frozenset[str]] = {
    "config": frozenset(),
    # the one hardened XML reader (CAP, ONVIF/SOAP, MANSCDP): below everything that reads XML
    "xmlsafe": frozenset(),
    "bus": frozenset({"config", "xmlsafe"}),
    "store": frozenset({"config", "xmlsafe"}),
    "cameras": frozenset({"config", "xmlsafe", "bus", "store"}),
    "devices": frozenset({"config", "xmlsafe", "bus", "store"}),
    "ingest": frozenset({"config", "xmlsafe", "bus", "store"}),
    # broadcasts are the devices layer's: alerts asks for them, the devices worker sends them
    "alerts": frozenset({"config", "xmlsafe", "bus", "store", "devices"}),
    # evidence files and camera settings are the camera workers'; device and case services
    "api": frozenset({"config", "xmlsafe", "bus", "store", "cameras", "devices", "alerts"}),
    "hub": frozenset({"config", "xmlsafe", "bus", "store", "cameras", "devices", "ingest", "alerts", "api"}),
}
# Folders at the top that are not packages of the hub (nothing may import them).
NOT_PACKAGES = {"tests", "bench", "web", "docs", "scripts", "var", "artifacts"}


def imported_packages(path: Path) -> set[tuple[str, int]]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {(alias.name.split(".")[0], node.lineno) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.module.split(".")[0], node.lineno))
    return found


def violations(root: Path, allowed: dict[str, frozenset[str]]) -> list[str]:
    wrong = []
    for package, may in allowed.items():
        for path in sorted((root / package).rglob("*.py")):
            for target, line in imported_packages(path):
                if target in allowed and target != package and target not in may:
                    wrong.append(f"{path.relative_to(root)}:{line} imports {target} "
                                 f"({package} may import only {', '.join(sorted(may)) or 'nothing of the hub'})")
    return wrong


def test_every_import_between_packages_is_a_declared_arrow():
    wrong = violations(ROOT, ALLOWED)
    assert not wrong, "\n".join(wrong)


def test_every_top_level_package_is_declared():
    packages = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    undeclared = packages - set(ALLOWED) - NOT_PACKAGES
    assert not undeclared, f"declare the arrows of {sorted(undeclared)} in ALLOWED"


def test_the_arrows_have_no_cycle():

    def visit(package: str, trail: tuple[str, ...]) -> None:
        assert package not in trail, f"cycle: {' → '.join(trail + (package,))}"
        for target in ALLOWED[package]:
            visit(target, trail + (package,))

    for package in ALLOWED:
        visit(package, ())


def test_a_sideways_import_is_caught(tmp_path):
    """The checker itself: an arrow between two packages of the same rank, even inside a
    function, is reported with file and line."""
    (tmp_path / "config").mkdir()
    (tmp_path / "store").mkdir()
    (tmp_path / "config" / "x.py").write_text("def f():\n    from store import db\n")
    (tmp_path / "store" / "y.py").write_text("import config.site\n")
    found = violations(tmp_path, {"config": frozenset(), "store": frozenset({"config"})})
    assert found == ["config/x.py:2 imports store (config may import only nothing of the hub)"]


def test_the_modules_of_live_view_import_one_another_one_way():
    """api/live/ once had a circle: the module that pulled the cameras imported onvif.py,
    which imported it back (under TYPE_CHECKING). Now views → sessions → feed → onvif and
    sender, each of them → source and config; no module of api/live reaches itself again."""
    package = ROOT / "api" / "live"
    names = {path.stem for path in package.glob("*.py") if path.stem != "__init__"}
    graph = {}
    for name in names:
        found = set()
        for node in ast.walk(ast.parse((package / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
        graph[name] = {m.removeprefix("api.live.") for m in found if m.startswith("api.live.")} & names

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for nxt in graph[start] - seen:
            if nxt == target or reaches(nxt, target, seen | {nxt}):
                return True
        return False

    circles = sorted(name for name in names if reaches(name, name, set()))
    assert not circles, f"api/live modules that import themselves through others: {circles} ({graph})"
