"""README promises about set-up, packaging, presets and exit codes that had no test (issue 21 item 5;
``docs/promises.md`` names each row): the Makefile installs before every target, dependencies are
ranges, the ``[cluster]`` extra, the actors' OpenMP policy, the shapes preset's filter and how presets
merge it, and the CLI's set of exit codes."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from pipeline.config import load_job
from pipeline.job import ExitCode, actor_env
from pipeline.signals import EXIT_TERMINATED

REPO = Path(__file__).resolve().parents[1]
#: What pip sees: the installed package's metadata (built from pyproject.toml; the Makefile's stamp
#: reinstalls whenever pyproject.toml changes).
REQUIRES = [Requirement(r) for r in importlib.metadata.requires("diffedit-batch") or []]
CORE = {r.name: r for r in REQUIRES if r.marker is None}


def extra(name: str) -> list[Requirement]:
    return [r for r in REQUIRES if r.marker is not None and r.marker.evaluate({"extra": name})]


def _phony_targets() -> list[str]:
    line = next(ln for ln in (REPO / "Makefile").read_text().splitlines() if ln.startswith(".PHONY:"))
    return line.split(":", 1)[1].split()


@pytest.mark.parametrize("target", [t for t in _phony_targets() if t not in ("install", "clean")])
def test_every_make_target_installs_what_it_needs_first(tmp_path, target):
    """README: "every make target installs what it needs first". On a fresh clone (no ``.venv``),
    ``make -n TARGET`` (print, run nothing) must create the venv and install torch and the package
    before the target's own commands."""
    if shutil.which("make") is None:
        pytest.fail("make is not installed: README's two commands need it")
    for name in ("Makefile", "pyproject.toml", "requirements/constraints.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, tmp_path / name)
    planned = subprocess.run(["make", "-n", target], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert planned.returncode == 0, planned.stderr
    lines = planned.stdout.splitlines()
    venv = next(i for i, ln in enumerate(lines) if "-m venv .venv" in ln)
    package = next(i for i, ln in enumerate(lines) if "pip install" in ln and "-e '.[dev]'" in ln)
    assert any("torch==" in ln for ln in lines[venv:package])  # the CPU build from local disk first
    stamped = next(i for i, ln in enumerate(lines) if ln.startswith("touch .venv/.installed-"))
    assert venv < package < stamped < len(lines) - 1, lines  # the target's own commands come after


def test_set_up_needs_only_python_3_10_and_make():
    assert importlib.metadata.metadata("diffedit-batch")["Requires-Python"] == ">=3.10"
    makefile = (REPO / "Makefile").read_text()
    assert "PYTHON ?= python3" in makefile  # the only interpreter the Makefile assumes


def test_dependencies_are_ranges_that_take_any_recent_torch():
    """README: the package accepts any recent torch; only development and CI pin (constraints.txt)."""
    assert {"torch", "diffusers", "transformers", "ray", "pyarrow", "fsspec", "s3fs"} <= set(CORE)
    for name, req in CORE.items():
        assert not any(s.operator in ("==", "===", "~=") for s in req.specifier), (name, str(req))  # no pins
    torch = CORE["torch"].specifier
    assert not any(s.operator in ("<", "<=") for s in torch)  # no ceiling on torch
    assert all(Version(v) in torch for v in ("2.4.0", "2.6.0", "2.9.1", "2.13.0", "3.0.0"))
    pins = (REPO / "requirements" / "constraints.txt").read_text()
    assert re.search(r"^torch==2\.13\.0", pins, re.M)  # development and CI: the CPU build on disk


def test_the_cluster_extra_adds_ray_default_at_the_same_floor_as_ray_data():
    """README: ``pip install 'diffedit-batch[cluster]'`` adds ``ray[default]`` (dashboard, Jobs API)."""
    ray_default = next(r for r in extra("cluster") if r.name == "ray")
    assert ray_default.extras == {"default"}
    assert CORE["ray"].extras == {"data"} and ray_default.specifier == CORE["ray"].specifier


def test_model_actors_wait_passively_unless_the_driver_says_otherwise(monkeypatch):
    """README: the model actors run with ``OMP_WAIT_POLICY=PASSIVE`` (their runtime env is
    ``actor_env()``, pipeline/job.py); a driver's own setting is passed on instead."""
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert actor_env()["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert actor_env()["OMP_WAIT_POLICY"] == "ACTIVE"
    job_py = (REPO / "pipeline" / "job.py").read_text()
    assert job_py.count('runtime_env={"env_vars": actor_env()}') == 1  # the edit stage's actors get it


def test_the_shapes_preset_keeps_alignment_of_at_least_0_4_and_filters_merge_key_by_key(tmp_path):
    """README: the shapes preset keeps ``score_alignment >= 0.4``; ``min``/``max`` (and ``by``) merge
    key by key with a preset's, and a bound set to one that always holds switches the preset's off."""
    preset_only = load_job(REPO / "jobs" / "shapes_recolor.yaml", env={})
    assert preset_only.filter.min == {"alignment": 0.4} and preset_only.filter.max == {}
    job = tmp_path / "job.yaml"
    job.write_text(
        f"presets: [models/shapes-v3, compute/cpu]\ninput: {{paths: [{tmp_path}/in]}}\n"
        f"output: {{path: {tmp_path}/out}}\nfilter: {{min: {{psnr: 20}}, max: {{mask_components: 3}}}}\n"
    )
    merged = load_job(job, env={}, configs_dir=REPO / "configs")
    assert merged.filter.min == {"alignment": 0.4, "psnr": 20.0}  # the preset's bound and the job's
    assert merged.filter.max == {"mask_components": 3.0}
    job.write_text(job.read_text().replace("psnr: 20", "alignment: -1000000.0"))
    assert load_job(job, env={}, configs_dir=REPO / "configs").filter.min == {"alignment": -1e6}


def test_the_exit_codes_readme_lists_are_exactly_the_clis_and_99_is_not_one():
    """README's table of exit codes lists exactly what the CLI returns (``ExitCode`` and SIGTERM's 143)
    and says 99, Airflow's "skipped", is never used."""
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("### Exit codes") : readme.index("### On a Ray cluster")]
    listed = {int(m) for m in re.findall(r"^\| (\d+) \|", table, re.M)}
    assert listed == {int(c) for c in ExitCode} | {EXIT_TERMINATED} == {0, 1, 2, 3, 4, 5, 143}
    assert '99, Airflow BashOperator\'s "skipped", is never used' in table
    cli = (REPO / "pipeline" / "cli.py").read_text()
    exits = re.findall(r"typer\.Exit\((.*)\)", cli)
    assert exits and all(
        e in ("0", "int(code)", "signals.EXIT_TERMINATED", "int(outcome.exit_code)") for e in exits
    )
