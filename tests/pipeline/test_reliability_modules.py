"""Issue 20, item 13: no import cycle between the job and its preflight; CPUs counted as this process
may use them (its affinity: taskset, a container's cpuset), not the machine's."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from pipeline_testing import REPO


def imports_of(module: Path) -> set[str]:
    """Every ``pipeline.*`` module ``module`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("pipeline"))
    return found


def test_the_pipeline_modules_import_no_cycle():
    package = REPO / "pipeline"
    graph = {f"pipeline.{p.stem}": imports_of(p) for p in package.glob("*.py")}
    assert "pipeline.validate" in graph["pipeline.job"]
    assert "pipeline.job" not in graph["pipeline.validate"]  # the cycle the issue found

    def visit(name: str, path: tuple[str, ...]) -> None:
        for dep in sorted(graph.get(name, ())):
            assert dep not in path, f"import cycle: {' -> '.join((*path, dep))}"
            visit(dep, (*path, dep))

    for name in graph:
        visit(name, (name,))


def test_the_library_imports_no_ray_and_nothing_of_the_job():
    """README: ``diffedit/`` (the library) has no Ray in it and does not depend on the job (``pipeline/``):
    no module of it imports ``ray`` or ``pipeline``, at the top or inside a function."""
    offenders = []
    for module in sorted((REPO / "diffedit").rglob("*.py")):
        for node in ast.walk(ast.parse(module.read_text())):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            offenders += [
                f"{module.relative_to(REPO)}: {name}"
                for name in names
                if name.split(".")[0] in ("ray", "pipeline")
            ]
    assert offenders == []
    code = "import sys, diffedit, diffedit.editor, diffedit.loading.load; print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'pipeline')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_local_ray_and_torch_threads_count_the_cpus_this_process_may_use():
    """Under ``taskset`` to one CPU, the local cluster the plan checks (and ``ensure_ray`` starts) has
    one CPU; ``os.cpu_count()`` would say the machine's."""
    code = (
        "import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]});"
        "from pipeline.plan import available_cpus, local_cluster;"
        "print(available_cpus(), local_cluster().nodes[0].cpus, os.cpu_count())"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    cpus, cluster, machine = out.stdout.split()
    assert (int(cpus), float(cluster)) == (1, 1.0)
    assert int(machine) == os.cpu_count()


def test_one_atomic_json_write_for_the_library_and_the_output(tmp_path):
    import fsspec

    from diffedit.loading import files
    from pipeline import output as O

    obj = {"b": 1, "a": [1, 2]}
    files.write_json_atomic(tmp_path / "lib.json", obj)
    O.write_json_atomic(fsspec.filesystem("file"), str(tmp_path / "sub" / "out.json"), obj)
    assert (tmp_path / "lib.json").read_bytes() == (tmp_path / "sub" / "out.json").read_bytes()
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [
        "lib.json",
        "out.json",
    ]  # no temp files


def test_one_url_redactor():
    from diffedit.loading.urls import redact_url
    from pipeline.storage import redact

    for uri in ("s3://key:secret@b/k?X-Amz-Signature=1", "https://u@h.example/a.png?v=1#frag",
                "simplecache::s3://u:p@b/m", "/a/local/path", "gs://b/o"):  # fmt: skip
        assert redact(uri) == redact_url(uri, keep_query=False)
        assert "secret" not in redact(uri) and "@" not in redact(uri) and "?" not in redact(uri)
    assert redact("simplecache::s3://u:p@b/m") == "simplecache::s3://b/m"
