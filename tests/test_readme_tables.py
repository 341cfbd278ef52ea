"""The README's method tables follow the registry and the method YAMLs: every built-in method has a row in the
Ray resource table ("Running on a cluster (Ray)") giving exactly what ``method_resources`` resolves for each
column's profiles, and a row in one of the method tables of "What is measured, and how". A method added without
README rows, or a ``resources:`` value changed in a YAML without the table, fails here."""

from __future__ import annotations

import re

from anomaly_bench.core.config import REPO_DIR, is_builtin_method, method_resources, method_yaml_path, read_yaml
from anomaly_bench.core.registry import get_method, list_methods

README = REPO_DIR / "README.md"
RAY_SECTION = "## Running on a cluster (Ray)"
MEASURED_SECTION = "## What is measured, and how"
RESOURCE_KEYS = ("cpus", "gpus", "memory_gb")
SEPARATOR = re.compile(r"\|(\s*:?-+:?\s*\|)+")  # |---|---:|


def _section(text: str, heading: str) -> str:
    start = text.find("\n" + heading + "\n")
    assert start >= 0, f"README.md has no section '{heading}' (tests/test_readme_tables.py looks for it)"
    end = text.find("\n## ", start + 1)
    return text[start: end if end >= 0 else len(text)]


def _cells(line: str) -> list[str]:
    # split a markdown table row on unescaped pipes (the method tables write |x − x̂| as \|x − x̂\|)
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def _tables(section: str) -> list[tuple[list[str], list[list[str]]]]:
    """(header cells, body rows) of every markdown table in ``section``."""
    tables, lines, i = [], section.splitlines(), 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and SEPARATOR.fullmatch(lines[i + 1].strip()):
            header, body, i = _cells(lines[i]), [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                body.append(_cells(lines[i]))
                i += 1
            tables.append((header, body))
        else:
            i += 1
    return tables


def _first_cell_name(cell: str) -> str | None:
    m = re.fullmatch(r"`([A-Za-z0-9_]+)`", cell)
    return m.group(1) if m else None


def _builtin_methods() -> list[str]:
    # plugins other tests register in the same session are not README material: built-ins only
    names = [m for m in list_methods() if is_builtin_method(m)]
    assert names, "no built-in method registered"
    return names


def _declared_profiles(name: str) -> set[str]:
    """Every profile the method's configuration names: its ``profiles`` and its ``resources`` entries."""
    path = method_yaml_path(name)
    if path is not None:
        data = read_yaml(path)
        profiles, resources = data.get("profiles") or {}, data.get("resources") or {}
    else:
        cls = get_method(name)
        profiles, resources = getattr(cls, "profiles", None) or {}, getattr(cls, "resources", None) or {}
    return set(profiles) | set(resources)


def _resource_table() -> tuple[list[list[str]], dict[str, list[str]]]:
    """Column profiles (backticked names of each header cell after `method`) and rows by method name."""
    tables = [(h, b) for h, b in _tables(_section(README.read_text(encoding="utf-8"), RAY_SECTION))
              if h and h[0] == "method"]
    assert len(tables) == 1, (
        f"README.md, section '{RAY_SECTION}': expected exactly one table with a `method` column (the resources per "
        f"job), found {len(tables)}")
    header, body = tables[0]
    columns = [re.findall(r"`([^`]+)`", c) for c in header[1:]]
    assert columns and all(columns), (
        f"README.md, Ray resource table: every column after `method` must name its profile(s) in backticks, "
        f"got header {header}")
    rows: dict[str, list[str]] = {}
    for cells in body:
        name = _first_cell_name(cells[0]) if cells else None
        assert name, f"README.md, Ray resource table: row {cells} must start with `method_name`"
        assert name not in rows, f"README.md, Ray resource table: `{name}` has two rows; keep one"
        assert len(cells) == len(header), (
            f"README.md, Ray resource table: row `{name}` has {len(cells)} cells, the header {len(header)}")
        rows[name] = cells[1:]
    return columns, rows


def _fmt(res: dict[str, float]) -> str:
    return " / ".join(f"{res[k]:g}" for k in RESOURCE_KEYS)


def test_ray_resource_table_covers_every_profile_column():
    columns, _ = _resource_table()
    covered = {p for col in columns for p in col}
    for name in _builtin_methods():
        missing = sorted(_declared_profiles(name) - covered)
        assert not missing, (
            f"method '{name}' declares profile(s) {missing} (profiles/resources in methods/{name}.yaml) that no "
            f"column of the README's Ray resource table names (columns: {columns}): add them to a column header "
            f"(or a new column) and fill in what method_resources gives")


def test_ray_resource_table_rows_match_method_resources():
    columns, rows = _resource_table()
    problems = []
    for name in _builtin_methods():
        if name not in rows:
            problems.append(
                f"method '{name}' has no row in the README's Ray resource table (section '{RAY_SECTION}'): add "
                f"| `{name}` | " + " | ".join(_fmt(method_resources(name, col[0])) for col in columns) + " |")
            continue
        for col, cell in zip(columns, rows[name]):
            resolved = {p: method_resources(name, p) for p in col}
            if len({_fmt(r) for r in resolved.values()}) > 1:
                problems.append(
                    f"method '{name}': the profiles {col} of one column of the README's Ray resource table resolve "
                    f"to different resources ({ {p: _fmt(r) for p, r in resolved.items()} }): split the column")
                continue
            want = resolved[col[0]]
            got = [float(x) for x in re.findall(r"\d+(?:\.\d+)?", cell)]
            if got != [float(want[k]) for k in RESOURCE_KEYS]:
                problems.append(
                    f"method '{name}', profile(s) {col}: the README's Ray resource table says '{cell}', but "
                    f"method_resources gives {_fmt(want)} (CPUs / GPUs / memory GB, from methods/{name}.yaml "
                    f"resources): update the row in README.md (or the YAML, if the table is right)")
    assert not problems, "\n".join(problems)


def test_ray_resource_table_has_no_stale_rows():
    _, rows = _resource_table()
    builtin = set(_builtin_methods())
    # a method whose optional dependency is missing is not registered but still ships its YAML: not stale
    stale = sorted(n for n in rows if n not in builtin and not (REPO_DIR / "methods" / f"{n}.yaml").is_file())
    assert not stale, f"README.md, Ray resource table: rows {stale} name no registered method: remove or rename them"


def test_every_method_is_in_a_method_table_of_what_is_measured():
    section = _section(README.read_text(encoding="utf-8"), MEASURED_SECTION)
    # the method tables: first column `method` and a `score` column (not the profile or cpu-budget tables)
    tables = [b for h, b in _tables(section) if h and h[0] == "method" and "score" in h]
    assert tables, f"README.md, section '{MEASURED_SECTION}': no method table (columns `method` ... `score`) found"
    listed = {_first_cell_name(row[0]) for body in tables for row in body if row}
    missing = [n for n in _builtin_methods() if n not in listed]
    assert not missing, "\n".join(
        f"method '{n}' is in none of the method tables of the README's '{MEASURED_SECTION}' section: add a row "
        f"| `{n}` | ... in the same style (its score, source and deviations, from methods/{n}.yaml and its class "
        f"docstring)" for n in missing)
