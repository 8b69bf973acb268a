"""The results identity, shared by validate and run: it is what determines the pixels and never a path,
so another checkout with the model moved resumes the same output and a change of params is refused."""

from __future__ import annotations

import json
import shutil

from pipeline_testing import (
    CHECKOUT_ROWS,
    read_output,
    snapshot,
    state_file,
)
from typer.testing import CliRunner

from pipeline import output as O
from pipeline.cli import app
from pipeline.config import load_job
from pipeline.identity import ModelSource, identity_difference, inspect_model, results_hash, results_identity


def test_validate_agrees_with_run_on_a_finished_output(finished, monkeypatch):
    monkeypatch.chdir(finished)
    checked = CliRunner().invoke(app, ["validate", "jobs/shapes_recolor.yaml"])
    assert checked.exit_code == 0, checked.output
    assert "complete (4 rows, _SUCCESS present: a run is a no-op)" in checked.output
    assert "another configuration" not in checked.output
    ran = CliRunner().invoke(app, ["run", "jobs/shapes_recolor.yaml"])
    assert ran.exit_code == 0 and "already complete" in ran.output
    job = json.loads(state_file(finished / "out" / "shapes_recolor", O.JOB_FILE).read_text())
    assert job["results_hash"][:16] in checked.output  # the hash validate computed is the one run wrote


def test_the_model_column_shows_the_source_as_written(finished):
    table = read_output(finished / "out" / "shapes_recolor")
    assert table.column("model").to_pylist() == ["models/shapes-v3"] * CHECKOUT_ROWS
    summary = json.loads(state_file(finished / "out" / "shapes_recolor", O.SUMMARY_FILE).read_text())
    assert summary["model"] == "models/shapes-v3"


def test_another_checkout_with_the_model_moved_resumes_the_same_output(finished, tmp_path, monkeypatch):
    """Redeploy to another directory, move the model, point at the first checkout's output: no-op."""
    other = tmp_path / "redeployed"
    shutil.copytree(finished, other, ignore=shutil.ignore_patterns("out"))
    (other / "models" / "shapes-v3").rename(other / "models" / "moved")
    out = finished / "out" / "shapes_recolor"
    (other / "jobs" / "moved.yaml").write_text(
        "name: shapes_recolor\npresets: [models/shapes-v3, compute/cpu]\n"
        "input: {paths: [data/shapes_manifest]}\n"
        f"output: {{path: '{out}', rows_per_file: 8}}\nmodel: {{source: models/moved}}\n"
        "failure: {max_failed_fraction: 0.0}\n"
    )
    before = snapshot(out)
    monkeypatch.chdir(other)
    checked = CliRunner().invoke(app, ["validate", "jobs/moved.yaml"])
    assert checked.exit_code == 0, checked.output
    assert "a run is a no-op" in checked.output
    ran = CliRunner().invoke(app, ["run", "jobs/moved.yaml"])
    assert ran.exit_code == 0, ran.output
    assert "already complete" in ran.output
    assert snapshot(out) == before  # nothing rewritten

    changed = (other / "jobs" / "moved.yaml").read_text() + "params: {guidance_scale: 3.0}\n"
    (other / "jobs" / "changed.yaml").write_text(changed)
    refused = CliRunner().invoke(app, ["validate", "jobs/changed.yaml"])
    assert refused.exit_code == 3
    assert "another configuration" in refused.output and "differs in: params" in refused.output
    refused_run = CliRunner().invoke(app, ["run", "jobs/changed.yaml"])
    assert refused_run.exit_code == 3 and "differs in: params" in refused_run.output
    assert snapshot(out) == before


def test_the_results_identity_is_what_determines_the_pixels(tmp_path):
    base = "input: {paths: [in]}\noutput: {path: out}\nmodel: {source: m}\n"

    def job(extra: str = "", name: str = "a.yaml", start: str = base):
        (tmp_path / name).write_text(start + extra)
        return load_job(tmp_path / name, env={})

    model = ModelSource("local", "/m", None, {"kind": "files", "weights_sha256": "a" * 64}, "")
    other_weights = ModelSource("local", "/m", None, {"kind": "files", "weights_sha256": "b" * 64}, "")
    moved = ModelSource("local", "/elsewhere/m", None, model.fingerprint, "")
    key = results_identity(job(), model)
    same = [
        results_identity(job(), moved),  # the model's location
        results_identity(
            job("", "b.yaml", "input: {paths: [/x/in]}\noutput: {path: /y/out}\nmodel: {source: m}\n"), model
        ),
        results_identity(
            job("compute: {actors: 1, batch_size: 1, max_batch: 2, torch_threads: 1}\n", "c.yaml"), model
        ),
        results_identity(
            job("images: {allow: ['s3://bucket/']}\nfailure: {max_failed_fraction: 0.5}\n", "d.yaml"), model
        ),
        results_identity(job("name: other\n", "e.yaml"), model),
    ]
    assert all(results_hash(s) == results_hash(key) for s in same)
    different = {
        "model": results_identity(job(), other_weights),
        "params": results_identity(job("params: {encode_ratio: 0.5}\n", "f.yaml"), model),
        "images": results_identity(job("images: {max_side: 512}\n", "g.yaml"), model),
        "compute": results_identity(job("compute: {dtype: bfloat16}\n", "h.yaml"), model),
    }
    for what, identity in different.items():
        assert results_hash(identity) != results_hash(key)
        assert identity_difference(key, identity) == what
    assert "results_version" in key and "/m" not in json.dumps(key)


def test_a_local_models_fingerprint_covers_its_configs_and_tokenizer(tiny_model, tmp_path):
    """README "Results identity": a local model is its weights' sha256 plus the sha256 of the small files a
    pipeline loads, so an edited scheduler config or tokenizer file is another configuration, while a
    file no pipeline loads (a README, a hidden sidecar) and the directory's path are not."""
    model = tmp_path / "m"
    shutil.copytree(tiny_model, model)
    (tmp_path / "job.yaml").write_text(
        f"input: {{paths: [in]}}\noutput: {{path: out}}\nmodel: {{source: '{model}'}}\n"
    )
    job = load_job(tmp_path / "job.yaml", env={})

    def fingerprint() -> dict:
        return inspect_model(job).fingerprint

    first = fingerprint()
    assert first["kind"] == "files" and set(first) == {"kind", "weights_sha256", "configs_sha256"}
    (model / "README.md").write_text("notes about the model\n")
    assert fingerprint() == first

    scheduler = model / "scheduler" / "scheduler_config.json"
    original = scheduler.read_text()
    scheduler.write_text(json.dumps({**json.loads(original), "beta_end": 0.013}))
    changed = fingerprint()
    assert (
        changed["configs_sha256"] != first["configs_sha256"]
        and changed["weights_sha256"] == first["weights_sha256"]
    )
    scheduler.write_text(original)
    assert fingerprint() == first  # by content

    vocab = next(p for p in (model / "tokenizer").iterdir() if p.suffix in (".json", ".txt"))
    vocab.write_bytes(vocab.read_bytes() + b"\n")
    assert fingerprint()["configs_sha256"] != first["configs_sha256"]
