"""Reading the site file: bytes to text (UTF-8, with a hint for GBK), text to YAML nodes
hardened against alias cycles, alias bombs and duplicate keys, then the document check
of :mod:`config.site.problems`.

    site = load_site(path)                     # raises SiteError listing every problem
    site, problems = check_site_file(path)     # never raises for bad input
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from config.site.models import Site
from config.site.problems import Problem, SiteError, check_document, format_path


# ---------------------------------------------------------------------------- the file

_MAX_EXPANDED_VALUES = 200_000      # YAML aliases can make a small file expand enormously


def _alias_problem(root: yaml.Node) -> tuple[int, str] | None:
    """Reject alias cycles and alias bombs before constructing Python data."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in on_path:
            raise _Cycle(node)
        on_path.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            for item in node.value:
                total += size(item)
                if total > _MAX_EXPANDED_VALUES:
                    break
        elif isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                total += size(k) + size(v)
                if total > _MAX_EXPANDED_VALUES:
                    break
        on_path.discard(key)
        sizes[key] = total
        return total

    try:
        if size(root) > _MAX_EXPANDED_VALUES:
            return 1, f"the document expands to more than {_MAX_EXPANDED_VALUES} values (YAML aliases)"
    except _Cycle as cyc:
        return cyc.node.start_mark.line + 1, "a YAML alias (*name) refers to a node that contains it (cycle)"
    return None


class _Cycle(Exception):
    def __init__(self, node: yaml.Node):
        self.node = node


def _duplicate_keys(root: yaml.Node, data: Any, file: str) -> list[Problem]:
    """Mapping keys given twice: PyYAML would silently keep only the last one."""
    out = []
    stack: list[tuple[yaml.Node, tuple]] = [(root, ())]
    visited: set[int] = set()
    while stack:
        node, loc = stack.pop()
        if id(node) in visited:
            continue
        visited.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend((item, loc + (i,)) for i, item in enumerate(node.value))
        elif isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                    line = k.start_mark.line + 1
                    if k.value in first:
                        out.append(Problem(file, line, format_path(loc + (k.value,), data),
                                           f"duplicate key '{k.value}' (first on line {first[k.value]}); "
                                           "YAML would silently keep only the last one"))
                    else:
                        first[k.value] = line
                    stack.append((v, loc + (k.value,)))
    return out


def _yaml_reason(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        parts = [p for p in (exc.context, exc.problem) if p]
        text = "; ".join(parts) if parts else type(exc).__name__
    else:
        text = type(exc).__name__
    if isinstance(exc, yaml.constructor.ConstructorError):
        return f"YAML error: {text}"
    return f"YAML syntax error: {text}"


def _yaml_line(exc: yaml.YAMLError) -> int | None:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return mark.line + 1 if mark is not None else None


def read_site_document(path: str | os.PathLike) -> tuple[Any, yaml.Node | None, list[Problem]]:
    """The parsed data of a site file (not yet validated), its YAML node tree, and the
    problems of reading it (encoding, YAML, duplicate keys); data is None when unreadable."""
    path = Path(path)
    file = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, None, [Problem(file, None, "", "no such file")]
    except IsADirectoryError:
        return None, None, [Problem(file, None, "", "is a directory, not a site file")]
    except PermissionError:
        return None, None, [Problem(file, None, "", "cannot read the file: permission denied")]
    except OSError as exc:
        return None, None, [Problem(file, None, "", f"cannot read the file: {exc.strerror or type(exc).__name__}")]
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        hint = ""
        try:
            raw.decode("gb18030")
            hint = "; it looks like GBK/GB18030 —"
        except UnicodeDecodeError:
            pass
        return None, None, [Problem(file, line, "", f"not valid UTF-8 (column {col}){hint} save the file as UTF-8")]
    bad = yaml.reader.Reader.NON_PRINTABLE.search(text)
    if bad:
        line = text.count("\n", 0, bad.start()) + 1
        col = bad.start() - (text.rfind("\n", 0, bad.start()) + 1) + 1
        return None, None, [Problem(file, line, "", f"control character U+{ord(bad.group()):04X} at column {col} "
                                              "is not allowed in YAML (is this a text file?)")]

    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, None, [Problem(file, None, "", "the file is empty; expected a mapping with version, name, grid, …")]
        alias = _alias_problem(root)
        if alias is not None:
            return None, None, [Problem(file, alias[0], "", alias[1])]
        data = loader.construct_document(root)
    except yaml.YAMLError as exc:
        return None, None, [Problem(file, _yaml_line(exc), "", _yaml_reason(exc))]
    except RecursionError:
        return None, None, [Problem(file, None, "", "the document is nested too deeply")]
    finally:
        loader.dispose()

    return data, root, _duplicate_keys(root, data, file)


def check_site_file(path: str | os.PathLike) -> tuple[Site | None, list[Problem]]:
    """Read and validate a site file: (site, []) or (None, every problem).  Never raises for
    bad input: unreadable files, encodings and YAML errors are problems too."""
    path = Path(path)
    file = str(path)
    data, root, dupes = read_site_document(path)
    if root is None:
        return None, dupes
    site, problems = check_document(data, file, root, path.resolve().parent)
    if dupes:
        problems = sorted(dupes + problems, key=lambda p: p.line or 0)
        site = None
    if site is not None:
        site._source = path.resolve()
    return site, problems


def load_site(path: str | os.PathLike) -> Site:
    """The site in ``path``; raises SiteError listing every problem."""
    site, problems = check_site_file(path)
    if problems or site is None:
        raise SiteError(problems or [Problem(str(path), None, "", "could not be loaded")])
    return site
