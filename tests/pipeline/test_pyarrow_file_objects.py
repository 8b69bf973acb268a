"""No Python file object is ever handed to pyarrow (an Arrow teardown bug aborts the process at exit:
exit 134, ``terminate called without an active exception``), checked over the source, and (slow) 30
real processes of validate and of the nightly no-op run, every one exit 0."""

from __future__ import annotations

import ast
import time

import pytest
from pipeline_testing import (
    REPO,
    cli,
)

PYARROW_READERS = {
    "read_table",
    "read_schema",
    "read_metadata",
    "ParquetFile",
    "write_table",
    "ParquetWriter",
}


def python_file_objects_given_to_pyarrow(source: str) -> list[int]:
    """Lines where a pyarrow reader/writer gets a Python file object: a name bound by
    ``with <x>.open(...) as name`` / ``with open(...) as name`` / ``name = io.BytesIO()``, or such a call
    inline."""

    def is_file_call(node: ast.AST) -> bool:
        if not isinstance(node, ast.Call):
            return False
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
        return name in ("open", "BytesIO")

    tree = ast.parse(source)
    handles: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.With):
            for item in node.items:
                if is_file_call(item.context_expr) and isinstance(item.optional_vars, ast.Name):
                    handles.add(item.optional_vars.id)
        if isinstance(node, ast.Assign) and is_file_call(node.value):
            handles.update(t.id for t in node.targets if isinstance(t, ast.Name))
    bad = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        position = 1 if node.func.attr == "write_table" else 0  # write_table(table, where)
        if node.func.attr not in PYARROW_READERS or len(node.args) <= position:
            continue
        where = node.args[position]
        if is_file_call(where) or (isinstance(where, ast.Name) and where.id in handles):
            bad.append(node.lineno)
    return bad


def test_the_checker_finds_file_objects():
    assert python_file_objects_given_to_pyarrow(
        "with fs.open(p, 'rb') as f:\n    t = pq.read_table(f)\n"
    ) == [2]
    assert python_file_objects_given_to_pyarrow("pq.ParquetFile(open(p, 'rb'))\n") == [1]
    assert python_file_objects_given_to_pyarrow("b = io.BytesIO()\npq.write_table(t, b)\n") == [2]
    assert python_file_objects_given_to_pyarrow("pq.read_table(p, filesystem=fs)\n") == []


def test_no_python_file_object_is_handed_to_pyarrow_anywhere():
    offenders = {}
    for folder in ("pipeline", "diffedit", "benchmarks", "tests"):
        for path in sorted((REPO / folder).rglob("*.py")):
            lines = python_file_objects_given_to_pyarrow(path.read_text())
            if lines:
                offenders[str(path.relative_to(REPO))] = lines
    assert offenders == {}


@pytest.mark.slow
def test_validate_and_the_nightly_noop_run_exit_0_thirty_times_each(finished):
    """The exit-time abort (exit 134, ``terminate called without an active exception``) came from
    Parquet read through Python file objects: 30 real processes of each command, every one exit 0."""
    codes: dict[str, list[int]] = {"validate": [], "run": []}
    started = time.time()
    for _ in range(30):
        for command in ("validate", "run"):
            result = cli(command, "jobs/shapes_recolor.yaml", cwd=finished, env={"RAY_ADDRESS": ""})
            codes[command].append(result.returncode)
            assert result.returncode == 0, (
                command,
                result.returncode,
                result.stdout[-2000:],
                result.stderr[-3000:],
            )
            assert "terminate called" not in result.stderr
            expected = "a run is a no-op" if command == "validate" else "already complete"
            assert expected in result.stdout
            assert "Started a local Ray" not in result.stderr  # the no-op starts no Ray
    print(f"30 validate + 30 no-op run: exit codes {set(codes['validate'])}, {set(codes['run'])}; "
          f"{(time.time() - started) / 60:.1f} s per process")  # fmt: skip
