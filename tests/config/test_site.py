"""The site file: models, the loader that reports every problem, and the demo site.

Real files in tmp_path; no mocks."""
from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.settings import DEMO_SITE_FILE
from config.site import (
    Credential,
    CredentialError,
    Problem,
    Site,
    SiteError,
    check_site_data,
    check_site_file,
    load_site,
    resolve_password,
)
from config.vocabulary import DEVICE_KIND_LABELS, LEVEL_LABELS, ROLE_LABELS, DeviceKind, GridLevel, Role

SECRET = "S3cr3t-Hunter2-xyz"


def write(tmp_path: Path, text: str | bytes, name: str = "site.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def line_of(text: str, needle: str, nth: int = 0) -> int:
    """1-based line of the nth line containing ``needle``."""
    hits = [i + 1 for i, line in enumerate(text.splitlines()) if needle in line]
    return hits[nth]


def demo_data() -> dict:
    return yaml.safe_load(DEMO_SITE_FILE.read_text(encoding="utf-8"))


def inside(point, boundary) -> bool:
    lons = [p[0] for p in boundary]
    lats = [p[1] for p in boundary]
    return min(lats) <= point.lat <= max(lats) and min(lons) <= point.lon <= max(lons)


# ---------------------------------------------------------------------------- demo site

def test_demo_site_loads_cleanly():
    site, problems = check_site_file(DEMO_SITE_FILE)
    assert problems == []
    assert site is not None and site.source_file == DEMO_SITE_FILE.resolve()
    assert site.name == "示范县雪亮工程"
    levels = [n.level for n, _, _ in site.nodes()]
    assert levels.count(GridLevel.county) == 1
    assert levels.count(GridLevel.township) == 2
    assert levels.count(GridLevel.village) + levels.count(GridLevel.community) == 4
    assert levels.count(GridLevel.community) >= 1
    assert levels.count(GridLevel.grid) == 8
    assert len(site.cameras) == 4 and len(site.devices) == 16


def test_demo_site_geometry_and_devices():
    site = load_site(DEMO_SITE_FILE)
    for node, parent, _ in site.nodes():
        assert node.center is not None and node.boundary, node.code
        assert inside(node.center, node.boundary)
        if parent is not None:
            assert inside(node.center, site.node(parent).boundary)
    villages = [n for n, _, _ in site.nodes() if n.level in (GridLevel.village, GridLevel.community)]
    for village in villages:
        below = set(site.subtree_codes(village.code))
        cams = [c for c in site.cameras if c.grid in below]
        assert len(cams) == 1, village.name
        kinds = sorted(d.kind.value for d in site.devices if d.grid in below)
        assert kinds == sorted(k.value for k in DeviceKind)
    for thing in [*site.cameras, *site.devices]:
        assert thing.position is not None and inside(thing.position, site.node(thing.grid).boundary), thing.id
    for cam in site.cameras:
        assert cam.rtsp_url == f"rtsp://127.0.0.1:18554/{cam.id}"
        assert cam.credentials == "demo-cams"
    assert site.credentials["demo-cams"].password_env == "XLHUB_DEMO_CAMERA_PASSWORD"
    roles = {u.role for u in site.users}
    assert {Role.admin, Role.centre_lead, Role.dispatcher, Role.video_supervisor, Role.grid_worker,
            Role.grid_head, Role.department_handler} <= roles
    for user in site.users:
        if user.role in (Role.grid_worker, Role.grid_head):
            assert site.node(user.node).level is GridLevel.grid
    townships = [n.code for n, _, _ in site.nodes() if n.level is GridLevel.township]
    for code in townships:
        assert {u.role for u in site.users if u.node == code} >= {Role.dispatcher, Role.video_supervisor}


def test_demo_site_tree_helpers():
    site = load_site(DEMO_SITE_FILE)
    township = next(n for n, _, _ in site.nodes() if n.name == "东山镇")
    expected = {township.code}
    for village in township.children:
        expected.add(village.code)
        expected.update(g.code for g in village.children)
    assert len(expected) == 7
    sub = site.subtree_codes(township.code)
    assert set(sub) == expected and len(sub) == 7 and sub[0] == township.code
    other = next(n for n, _, _ in site.nodes() if n.name == "西河乡")
    assert not set(sub) & set(site.subtree_codes(other.code))

    grid = township.children[0].children[0]
    assert [n.code for n in site.ancestors(grid.code)] == [site.grid.code, township.code, township.children[0].code]
    assert site.path(grid.code) == [site.grid.code, township.code, township.children[0].code, grid.code]
    assert site.ancestors(site.grid.code) == [] and site.path(site.grid.code) == [site.grid.code]
    assert site.node(grid.code) is grid
    assert site.in_scope(township.code, grid.code) and not site.in_scope(other.code, grid.code)
    with pytest.raises(KeyError):
        site.node("000")

    order = list(site.nodes())
    assert order[0] == (site.grid, None, 0)
    assert [(n.code, d) for n, _, d in order[:4]] == [
        (site.grid.code, 0), (township.code, 1), (township.children[0].code, 2), (grid.code, 3)]
    assert sorted(site.subtree_codes(site.grid.code)) == sorted(n.code for n, _, _ in order)


def test_labels_are_complete():
    assert set(ROLE_LABELS) == set(Role) and ROLE_LABELS[Role.grid_worker] == "网格员"
    assert set(LEVEL_LABELS) == set(GridLevel) and GridLevel.community.label == "社区"
    assert set(DEVICE_KIND_LABELS) == set(DeviceKind) and DeviceKind.radio.label == "公网对讲机"
    assert Role.dispatcher.label == "调度员" and Role("hotline") is Role.hotline
    assert GridLevel.village.rank == GridLevel.community.rank == 2


# ---------------------------------------------------------------------------- a broken file

BROKEN = f"""\
version: 1
name: 坏县
grid:
  code: "510100"
  name: 坏县
  level: county
  children:
    - code: "510101"
      name: 东山镇
      level: township
      children:
        - code: "510101001"
          name: 东山村
          level: village
          children:
            - code: "510101"
              name: 重号网格
              level: grid
            - code: "510101002"
              name: 错位镇
              level: township
credentials:
  cams:
    username: admin
    password_env: XLHUB_TEST_CAM_PW
cameras:
  - id: cam-1
    name: 村口
    grid: "999999"
    rtsp_url: rtsp://127.0.0.1:8554/cam-1
  - id: cam-2
    name: 会议室
    grid: "510101001"
    rtps_url: rtsp://127.0.0.1:8554/cam-2
  - id: cam-3
    name: 广场
    grid: "510101001"
    rtsp_url: http://127.0.0.1/cam-3
    credentials: camz
  - id: cam-4
    name: 路口
    grid: "510101001"
    rtsp_url: rtsp://admin:{SECRET}@10.0.0.4:554/h264
    position: {{lat: 95.0, lon: 104.1}}
devices:
  - {{id: cam-1, kind: door, name: 门禁, grid: "510101001"}}
departments:
  - {{code: police, name: 派出所, node: "510101"}}
users:
  - {{username: admin, name: 管理员, role: admin, node: "510100"}}
  - {{username: handler, name: 处置员, role: department_handler, node: "510101"}}
"""


def test_broken_file_reports_every_problem(tmp_path):
    path = write(tmp_path, BROKEN)
    site, problems = check_site_file(path)
    assert site is None
    by_path: dict[str, list[Problem]] = {}
    for p in problems:
        assert p.file == str(path)
        by_path.setdefault(p.path, []).append(p)

    def expect(path_: str, fragment: str, line: int | None = None) -> Problem:
        found = [p for p in by_path.get(path_, []) if fragment in p.reason]
        assert found, f"no problem at {path_} mentioning {fragment!r}; got:\n" + "\n".join(map(str, problems))
        if line is not None:
            assert found[0].line == line, str(found[0])
        return found[0]

    dup = expect("grid.children[0].children[0].children[0].code", "duplicate grid code '510101'",
                 line_of(BROKEN, 'code: "510101"', 1))
    first_line = line_of(BROKEN, 'code: "510101"')
    assert "grid.children[0].code" in dup.reason and f"line {first_line}" in dup.reason
    expect("grid.children[0].children[0].children[1].level", "cannot be under the village",
           line_of(BROKEN, "level: township", 1))
    expect("cameras[0].grid", "unknown grid node '999999'", line_of(BROKEN, 'grid: "999999"'))
    expect("cameras[1].rtps_url", "unknown key 'rtps_url' (did you mean 'rtsp_url'?)", line_of(BROKEN, "rtps_url"))
    expect("cameras[2].rtsp_url", "scheme must be rtsp:// or rtsps://", line_of(BROKEN, "http://"))
    expect("cameras[2].credentials", "unknown credentials 'camz' (did you mean 'cams'?)", line_of(BROKEN, "camz"))
    expect("cameras[3].rtsp_url", "embedded in the URL", line_of(BROKEN, SECRET))
    expect("cameras[3].position.lat", "less than or equal to 90", line_of(BROKEN, "lat: 95.0"))
    expect("devices[0].id", "duplicate id 'cam-1'", line_of(BROKEN, "{id: cam-1"))
    expect("users[1].department", "department_handler (职能部门) needs a department",
           line_of(BROKEN, "username: handler"))
    assert len(problems) == 11, "\n".join(map(str, problems))

    # sorted by line, every one printable as file:line: path: reason
    lines = [p.line for p in problems]
    assert lines == sorted(lines)
    assert str(dup) == f"{path}:{dup.line}: {dup.path}: {dup.reason}"

    # the secret appears nowhere: problems, their reprs, the exception of load_site
    with pytest.raises(SiteError) as info:
        load_site(path)
    assert info.value.problems == problems
    text = str(info.value)
    assert text.count("\n") == len(problems) - 1
    everything = text + repr(problems) + repr(info.value)
    assert SECRET not in everything and "admin:" not in everything


def test_wrong_top_level_type(tmp_path):
    for text, what in [("- version: 1\n- name: x\n", "a list"), ("just a string\n", "a string"), ("42\n", "a number")]:
        site, problems = check_site_file(write(tmp_path, text))
        assert site is None and len(problems) == 1
        assert "must be a mapping" in problems[0].reason and what in problems[0].reason
        assert problems[0].line == 1


def test_yaml_syntax_error_reports_its_line(tmp_path):
    text = 'version: 1\nname: x\ngrid:\n  code: "1"\n  name: [unclosed\n  level: county\n'
    site, problems = check_site_file(write(tmp_path, text))
    assert site is None and len(problems) == 1
    assert problems[0].line in (5, 6) and "YAML syntax error" in problems[0].reason
    text = "version: 1\nname: x\n\tgrid: {}\n"
    _, problems = check_site_file(write(tmp_path, text))
    assert problems[0].line == 3 and "YAML" in problems[0].reason


def test_non_utf8_is_a_problem(tmp_path):
    raw = "version: 1\nname: 示范县\n".encode("gbk")
    site, problems = check_site_file(write(tmp_path, raw))
    assert site is None and len(problems) == 1
    assert problems[0].line == 2 and "UTF-8" in problems[0].reason
    site, problems = check_site_file(write(tmp_path, b"\xff\xfe\x00garbage"))
    assert site is None and problems


def test_empty_and_unreadable_files(tmp_path):
    for text in ("", "\n\n", "# nothing but a comment\n"):
        site, problems = check_site_file(write(tmp_path, text))
        assert site is None and len(problems) == 1 and "empty" in problems[0].reason
    for path in (tmp_path / "missing.yaml", tmp_path):
        site, problems = check_site_file(path)
        assert site is None and len(problems) == 1 and problems[0].line is None
        assert str(problems[0]).startswith(f"{path}: ")
    with pytest.raises(SiteError):
        load_site(tmp_path / "missing.yaml")


def test_yaml_alias_cycles_bombs_and_duplicate_keys(tmp_path):
    _, problems = check_site_file(write(tmp_path, "a: &x [1, *x]\n"))
    assert len(problems) == 1 and "cycle" in problems[0].reason
    bomb = "a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{n}: &{n} [{', '.join(['*' + p] * 10)}]\n" for p, n in zip("abcdef", "bcdefg"))
    _, problems = check_site_file(write(tmp_path, bomb))
    assert len(problems) == 1 and "aliases" in problems[0].reason
    text = DEMO_SITE_FILE.read_text(encoding="utf-8").replace("timezone: Asia/Shanghai",
                                                              "timezone: Asia/Shanghai\nname: 另一个名字")
    site, problems = check_site_file(write(tmp_path, text))
    assert site is None and len(problems) == 1
    assert problems[0].path == "name" and "duplicate key 'name'" in problems[0].reason
    assert problems[0].line == line_of(text, "另一个名字")


def test_more_rules(tmp_path):
    data = demo_data()
    grid = data["grid"]["children"][0]["children"][0]["children"][0]
    grid["children"] = [{"code": "999", "name": "子网格", "level": "grid"}]
    data["grid"]["children"][1]["level"] = "county"
    data["credentials"]["demo-cams"]["password"] = SECRET
    data["credentials"]["none"] = {"username": "u"}
    data["cameras"][1]["rtsp_url"] = "rtsp://10.0.0.1:70000/x"
    data["cameras"][2]["rtsp_url"] = f"rtsp://10.0.0.1/x?user=admin&password={SECRET}"
    del data["cameras"][3]["rtsp_url"]
    data["devices"][0]["kind"] = "门禁"
    data["users"][0]["department"] = "police-xihe"
    data["users"][1]["role"] = "boss"
    data["users"].append(dict(data["users"][2]))
    data["departments"].append(dict(data["departments"][0]))
    data["departments"][0]["node"] = "123"
    data["grid"]["children"][0]["boundary"] = [[p[1], p[0]] for p in data["grid"]["children"][0]["boundary"]]
    data["grid"]["children"][0]["children"][1]["center"] = {"lat": 10.0, "lon": 10.0}
    data["version"] = 2
    data["timezone"] = "Mars/Olympus"
    text = yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
    site, problems = check_site_file(write(tmp_path, text))
    out = "\n".join(map(str, problems))
    assert site is None
    for fragment in [
        "grid.children[0].children[0].children[0].children: a grid (网格) is the lowest level",
        "grid.children[1].level: a county (县(区)) cannot be under the county",
        "credentials.demo-cams.password: password_env and password are both given",
        "credentials.none: needs exactly one password source",
        "cameras[1].rtsp_url: port 70000 is out of range",
        "cameras[2].rtsp_url: credentials in the query string",
        "cameras[3]: needs rtsp_url or onvif",
        "devices[0].kind: must be one of: door, speaker, drone, radio (did you mean 'door' (门禁)?)",
        "users[0].department: only a department_handler has a department",
        "users[1].role: 'boss' is not valid",
        "users[10].username: duplicate username 'hotline'",
        "departments[3].code: duplicate department code 'police-dongshan'",
        "departments[0].node: unknown grid node '123'",
        "grid.children[0].boundary: points look like [lat, lon]",
        "grid.children[0].children[1].center: lies outside the node's boundary",
        "version: unsupported version",
        "timezone: unknown time zone",
    ]:
        assert fragment in out, f"{fragment!r} not in:\n{out}"
    assert SECRET not in out
    assert all(p.line is not None for p in problems)


def test_check_site_data_in_memory():
    site, problems = check_site_data(demo_data())
    assert problems == [] and isinstance(site, Site) and site.source_file is None
    data = demo_data()
    data["cameras"][0]["rtsp_url"] = f"rtsp://admin:{SECRET}@h/x"
    site, problems = check_site_data(data, file="inline")
    assert site is None and len(problems) == 1
    assert str(problems[0]).startswith("inline: cameras[0].rtsp_url: ")
    assert problems[0].line is None and SECRET not in str(problems[0])
    site, problems = check_site_data([1, 2])
    assert site is None and problems and "must be a mapping" in problems[0].reason
    data = demo_data()
    data["cameras"] = None          # "cameras:" with every entry commented out
    site, problems = check_site_data(data)
    assert problems == [] and site.cameras == []
    site, problems = check_site_data({})
    assert {p.path for p in problems} == {"version", "name", "grid"}
    assert all(p.reason == "field required" for p in problems)


def test_models_enforce_rules_when_built_directly():
    data = demo_data()
    data["users"][0]["node"] = "nowhere"
    with pytest.raises(ValueError, match="users\\[0\\].node: unknown grid node 'nowhere'"):
        Site.model_validate(data)
    with pytest.raises(ValueError, match="exactly one password source"):
        Credential(username="u")
    with pytest.raises(ValueError) as info:
        Credential(username="u", password=SECRET, password_env="X")
    assert SECRET not in str(info.value)
    cred = Credential(username="u", password=SECRET)
    assert SECRET not in repr(cred) and SECRET not in str(cred) and SECRET not in cred.model_dump_json()


def test_resolve_password(tmp_path, monkeypatch):
    env = "XLHUB_TEST_SITE_PW"
    monkeypatch.delenv(env, raising=False)
    cred = Credential(username="u", password_env=env)
    with pytest.raises(CredentialError, match=env):
        resolve_password(cred)
    monkeypatch.setenv(env, SECRET)
    assert resolve_password(cred) == SECRET
    assert resolve_password(Credential(username="u", password=SECRET)) == SECRET

    # password_file is relative to the site file's directory
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "cam.pw").write_text(SECRET + "\n", encoding="utf-8")
    data = demo_data()
    data["credentials"]["demo-cams"] = {"username": "admin", "password_file": "secrets/cam.pw"}
    site = load_site(write(tmp_path, yaml.safe_dump(data, allow_unicode=True)))
    file_cred = site.credentials["demo-cams"]
    assert Path(file_cred.password_file) == tmp_path.resolve() / "secrets" / "cam.pw"
    assert resolve_password(file_cred) == SECRET
    assert site.credentials_for(site.cameras[0]) == ("admin", SECRET)
    (tmp_path / "secrets" / "cam.pw").unlink()
    with pytest.raises(CredentialError, match="cam.pw") as info:
        resolve_password(file_cred)
    assert SECRET not in str(info.value)


def test_unset_password_env_is_not_a_check_time_problem(tmp_path):
    os.environ.pop("XLHUB_DEMO_CAMERA_PASSWORD_UNSET_FOR_TEST", None)
    data = demo_data()
    data["credentials"]["demo-cams"]["password_env"] = "XLHUB_DEMO_CAMERA_PASSWORD_UNSET_FOR_TEST"
    site, problems = check_site_data(data)
    assert problems == [] and site is not None


# ---------------------------------------------------------------------------- properties

json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=25,
)
SITE_KEYS = ["version", "name", "timezone", "grid", "credentials", "cameras", "devices", "departments", "users",
             "code", "level", "children", "id", "kind", "role", "node", "department", "rtsp_url", "password"]
site_like = st.dictionaries(st.sampled_from(SITE_KEYS) | st.text(max_size=8), json_like, max_size=8)


def assert_outcome(result, secret: str | None = None) -> None:
    site, problems = result
    assert isinstance(problems, list)
    if site is None:
        assert problems, "no site and no problems"
    else:
        assert isinstance(site, Site) and problems == []
    for p in problems:
        assert isinstance(p, Problem) and p.reason and isinstance(str(p), str)
        if secret is not None:
            assert secret not in str(p)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_like | site_like)
def test_arbitrary_data_never_raises(data):
    assert_outcome(check_site_data(data))


def _paths(node, prefix=()):
    """Every path into nested data, the root's () included."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


DEMO = demo_data()
SECRET_VALUES = [SECRET, f"rtsp://admin:{SECRET}@10.0.0.1/x", f"rtsp://10.0.0.1/x?password={SECRET}",
                 "rtsp://admin:123456?7@10.0.0.1/x", "rtsp://admin:99999#@10.0.0.1:554/x",
                 "http://admin:123456/7@10.0.0.1/x", "rtsp://admin:123456@/x"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_demo_site_never_raises(data):
    site = copy.deepcopy(DEMO)
    for _ in range(data.draw(st.integers(1, 4))):
        paths = [p for p in _paths(site) if p]
        if not paths:
            break
        path = data.draw(st.sampled_from(paths))
        parent = site
        for el in path[:-1]:
            parent = parent[el]
        key = path[-1]
        op = data.draw(st.sampled_from(["delete", "replace", "duplicate", "rename"]))
        if op == "delete":
            del parent[key]
        elif op == "replace":
            parent[key] = data.draw(json_like)
        elif op == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[key]))
        elif op == "rename" and isinstance(parent, dict):
            parent[data.draw(st.sampled_from(SITE_KEYS) | st.text(max_size=8))] = parent.pop(key)
    # finally put secrets where secrets go (plain passwords, stream URLs): never echoed
    secret_spots = []
    if isinstance(site.get("credentials"), dict):
        secret_spots += [(entry, "password") for entry in site["credentials"].values() if isinstance(entry, dict)]
    if isinstance(site.get("cameras"), list):
        secret_spots += [(cam, key) for cam in site["cameras"] if isinstance(cam, dict)
                         for key in ("rtsp_url", "substream_url")]
    if secret_spots:
        for target, key in data.draw(st.lists(st.sampled_from(secret_spots), max_size=3)):
            target[key] = data.draw(st.sampled_from(SECRET_VALUES))
    assert_outcome(check_site_data(site), secret=SECRET)
    site_text = "\n".join(map(str, check_site_data(site)[1]))
    assert "123456" not in site_text and "99999" not in site_text


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_arbitrary_text_files_never_raise(tmp_path, text):
    assert_outcome(check_site_file(write(tmp_path, text)))
