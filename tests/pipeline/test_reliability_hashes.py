"""Issue 20, item 10: one config hash per run: what ``validate`` prints, ``job.json`` records and
``summary.json`` reports are the same hash (of the job with its paths resolved), also when the job
file writes relative paths."""

from __future__ import annotations

import json
import re

from pipeline_testing import FAST_PARAMS, png_bytes, state_file, write_manifest
from typer.testing import CliRunner

from pipeline.cli import app


def test_validate_job_json_and_summary_agree_on_the_config_hash(
    ray_cluster, tiny_model, tmp_path, monkeypatch
):
    write_manifest(tmp_path / "in" / "m.parquet",
                   [{"id": f"r{i}", "image_bytes": png_bytes(i), "query": "a blue circle"} for i in range(2)])  # fmt: skip
    params = ", ".join(f"{k}: {v}" for k, v in FAST_PARAMS.items())
    (tmp_path / "job.yaml").write_text(  # relative input and output: resolved against the working directory
        f"input: {{paths: [in]}}\noutput: {{path: out}}\nmodel: {{source: '{tiny_model}'}}\n"
        f"params: {{{params}}}\ncompute: {{batch_size: 2, torch_threads: 1}}\n"
    )
    monkeypatch.chdir(tmp_path)
    checked = CliRunner().invoke(app, ["validate", "job.yaml"])
    assert checked.exit_code == 0, checked.output
    shown = re.search(r"config hash ([0-9a-f]{16})", checked.output).group(1)

    result = CliRunner().invoke(app, ["run", "job.yaml", "--address", ray_cluster])
    assert result.exit_code == 0, result.output
    owner = json.loads(state_file(tmp_path / "out", "job.json").read_text())["config_hash"]
    summary = json.loads(state_file(tmp_path / "out", "summary.json").read_text())["config_hash"]
    assert owner == summary
    assert summary.startswith(shown)
    # the end-of-run table shows the same one (its key column is as wide as its longest key)
    assert re.search(rf"^config hash +{shown}$", result.output, re.MULTILINE)
