"""The preflight of validate and run: a missing model is one line and exit 2 before Ray starts or
anything is written; a relative path is never a hub id; hub repositories are resolved to a commit
(offline from the snapshot cache) or refused with exit 2."""

from __future__ import annotations

import json
import shutil

from pipeline_testing import (
    FAST_PARAMS,
    REPO,
    cli,
    dead_port,
    make_checkout,
    png_bytes,
    read_output,
    state_file,
    write_manifest,
)
from typer.testing import CliRunner

from pipeline import output as O
from pipeline.cli import app


def test_run_refuses_a_missing_model_before_starting_ray_or_writing(tmp_path):
    root = tmp_path / "checkout"
    root.mkdir()
    shutil.copytree(REPO / "jobs", root / "jobs")
    write_manifest(root / "data" / "shapes_manifest" / "m.parquet",
                   [{"id": "a", "image_bytes": png_bytes(0), "query": "q"}])  # fmt: skip
    for command in ("validate", "run"):
        result = cli(command, "jobs/shapes_recolor.yaml", cwd=root, env={"RAY_ADDRESS": ""})
        assert result.returncode == 2, (command, result.stdout, result.stderr[-3000:])
        errors = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(errors) == 1, result.stderr  # one clear line, no traceback
        assert errors[0].startswith("error: config: ") and "model.source" in errors[0]
        assert f"{root}/models/shapes-v3: no such directory" in errors[0]
        assert "hf://org/name" in errors[0]  # how a hub repository is written instead
        assert "Ray" not in result.stderr
    assert not (root / "out").exists()  # nothing written to the output


def test_a_relative_model_path_is_never_taken_as_a_hub_id(tiny_model, tmp_path, monkeypatch):
    """models/shapes-v3 has the form of a hub id (org/name): from another directory it is a missing
    directory (exit 2), never a hub download."""
    checkout = make_checkout(tmp_path / "checkout", tiny_model, rows=2)
    job = checkout / "jobs" / "absolute_io.yaml"
    job.write_text(
        "presets: [models/shapes-v3, compute/cpu]\n"
        f"input: {{paths: ['{checkout / 'data' / 'shapes_manifest'}']}}\noutput: {{path: '{checkout / 'out'}'}}\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the job file by absolute path, from another directory
    for command in ("validate", "run"):
        result = CliRunner().invoke(app, [command, str(job)])
        assert result.exit_code == 2, result.output
        assert f"{elsewhere}/models/shapes-v3: no such directory" in result.output
    monkeypatch.chdir(checkout)
    assert CliRunner().invoke(app, ["validate", str(job)]).exit_code == 0


def test_a_hub_repository_without_a_hub_is_a_configuration_error(tmp_path, monkeypatch):
    write_manifest(tmp_path / "in" / "m.parquet", [{"id": "a", "image_bytes": png_bytes(0), "query": "q"}])
    (tmp_path / "job.yaml").write_text(
        "input: {paths: [in]}\noutput: {path: out}\nmodel: {source: 'hf://someorg/somemodel'}\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(app, ["run", "job.yaml"])
    assert result.exit_code == 2, result.output
    assert "cannot resolve someorg/somemodel: HF_HUB_OFFLINE=1" in result.output
    assert "no cached snapshot" in result.output
    # Online, the hub is asked and cannot answer: the client points at a loopback port where nothing
    # listens (the suite never reaches the real hub: tests/conftest.py sets HF_HUB_OFFLINE=1).
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{dead_port()}")
    result = CliRunner().invoke(app, ["run", "job.yaml"])
    assert result.exit_code == 2, result.output
    assert "cannot resolve someorg/somemodel: asking the hub failed" in result.output
    assert "OfflineModeIsEnabled" not in result.output  # it was asked
    assert not (tmp_path / "out").exists()


def test_a_hub_repository_is_pinned_to_the_commit_of_its_cached_snapshot(
    ray_cluster, tiny_model, tmp_path, monkeypatch
):
    """Offline, hf://org/name resolves through the local snapshot cache: the identity is the commit,
    the actors load that commit, and the model column shows hf://org/name."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "models--someorg--tiny-sd"
    shutil.copytree(tiny_model, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    write_manifest(tmp_path / "in" / "m.parquet", [{"id": "a", "image_bytes": png_bytes(0), "query": "q"}])
    params = ", ".join(f"{k}: {v}" for k, v in FAST_PARAMS.items())
    (tmp_path / "job.yaml").write_text(
        "input: {paths: [in]}\noutput: {path: out}\nmodel: {source: 'hf://someorg/tiny-sd', cache_dir: hf}\n"
        f"params: {{{params}}}\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    checked = CliRunner().invoke(app, ["validate", "job.yaml"])
    assert checked.exit_code == 0, checked.output
    assert (
        f"hub repository someorg/tiny-sd at commit {commit[:12]}: Stable Diffusion layout OK"
        in checked.output
    )
    ran = CliRunner().invoke(app, ["run", "job.yaml", "--address", ray_cluster])
    assert ran.exit_code == 0, ran.output
    identity = json.loads(state_file(tmp_path / "out", O.JOB_FILE).read_text())["results_identity"]
    assert identity["model"] == {"kind": "hub", "repo": "someorg/tiny-sd", "commit": commit}
    row = read_output(tmp_path / "out").to_pylist()[0]
    assert row["status"] == "ok" and row["model"] == "hf://someorg/tiny-sd"


def test_an_output_whose_state_cannot_sit_beside_it_is_refused(tiny_model, tmp_path, monkeypatch):
    """The run's state lives beside the output folder (``<parent>/.<name>.diffedit/``): an output with no
    parent folder (``/``; a bucket's root alike) or a local mount point (its sibling on another
    filesystem, where a commit is a copy) is a configuration error, exit 2, before anything is written."""
    checkout = make_checkout(tmp_path / "checkout", tiny_model, rows=2)
    monkeypatch.chdir(checkout)
    for output, reason in (("/", "has no parent folder"), ("/proc", "is a mount point")):
        job = checkout / "jobs" / "placed.yaml"
        job.write_text(
            "presets: [models/shapes-v3, compute/cpu]\n"
            f"input: {{paths: ['{checkout / 'data' / 'shapes_manifest'}']}}\noutput: {{path: '{output}'}}\n"
        )
        for command in ("validate", "run"):
            result = CliRunner().invoke(app, [command, str(job)])
            assert result.exit_code == 2, (output, command, result.output)
            assert f"jobs/placed.yaml: output.path: output {output} {reason}" in result.output
    assert not list(tmp_path.rglob("*.diffedit"))  # nothing written anywhere
