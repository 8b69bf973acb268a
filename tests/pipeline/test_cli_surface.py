"""The CLI's surface (--version, -q/-v before or after the command, flag help, $DIFFEDIT_CONFIGS) and
(slow) the installed wheel validating the demo job from a checkout."""

from __future__ import annotations

import logging
import shutil
import subprocess

import pytest
from pipeline_testing import REPO, installed_wheel
from typer.testing import CliRunner

from pipeline.cli import app


def test_cli_surface_version_quiet_after_the_command_and_flag_help(finished, monkeypatch, tmp_path):
    runner = CliRunner()
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.output.startswith("diffedit-batch ")
    monkeypatch.chdir(finished)
    quiet = runner.invoke(app, ["validate", "jobs/shapes_recolor.yaml", "-q"])
    assert quiet.exit_code == 0, quiet.output
    # README: -q keeps warnings and errors, -v adds debug logs, before or after the command
    logger = logging.getLogger("pipeline")
    for args, level in [
        ([], logging.INFO),
        (["-q"], logging.WARNING),
        (["--quiet"], logging.WARNING),
        (["-v"], logging.DEBUG),
        (["--verbose"], logging.DEBUG),
    ]:
        for argv in (
            [*args, "validate", "jobs/shapes_recolor.yaml"],
            ["validate", "jobs/shapes_recolor.yaml", *args],
        ):
            done = runner.invoke(app, argv)
            assert done.exit_code == 0 and logger.level == level, (argv, logger.level, done.output)
    assert runner.invoke(app, ["run", "jobs/shapes_recolor.yaml", "--quiet", "-v"]).exit_code == 0
    for command in ("run", "validate", "preview"):
        shown = runner.invoke(app, [command, "--help"], env={"COLUMNS": "120"})
        assert shown.exit_code == 0 and "<bool>" not in shown.output, shown.output
    monkeypatch.setenv("DIFFEDIT_CONFIGS", str(tmp_path / "no-presets"))
    missing = runner.invoke(app, ["validate", "jobs/shapes_recolor.yaml"])
    assert missing.exit_code == 2 and "$DIFFEDIT_CONFIGS" in missing.output


@pytest.mark.slow
def test_the_installed_wheel_validates_the_demo_job(tmp_path):
    """``pip install .`` (a wheel, into a fresh venv that sees the shared dependencies through a .pth
    file) then ``diffedit-batch validate jobs/shapes_recolor.yaml`` from a checkout."""
    venv, env = installed_wheel(REPO, tmp_path)
    site = next((venv / "lib").glob("python*/site-packages"))

    checkout = tmp_path / "checkout"
    shutil.copytree(REPO / "jobs", checkout / "jobs")
    shutil.copytree(REPO / "models" / "shapes-v3", checkout / "models" / "shapes-v3")
    exe = str(venv / "bin" / "diffedit-batch")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [exe, *args], cwd=checkout, env=env, capture_output=True, text=True, timeout=300
        )

    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import pipeline; print(pipeline.__file__)"],
                           cwd=checkout, env=env, capture_output=True, text=True)  # fmt: skip
    assert where.stdout.startswith(str(site)), where.stdout + where.stderr
    assert run("--version").stdout.strip() == "diffedit-batch 0.1.0"
    assert run("prepare", "shapes", "--out", "data/shapes_manifest", "--rows", "3").returncode == 0
    checked = run("validate", "jobs/shapes_recolor.yaml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Stable Diffusion layout OK" in checked.stdout and checked.stdout.strip().endswith("valid")
