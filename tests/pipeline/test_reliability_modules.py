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
