"""Job configuration: strict keys and types, presets, ${VAR} interpolation, hashes; the shipped jobs."""

from __future__ import annotations

from pathlib import Path

import pytest
from pipeline_testing import REPO

from pipeline.config import ConfigError, _read_yaml, build_job, check_document, interpolate, load_job
from pipeline.identity import ModelSource, results_hash, results_identity
from pipeline.sizing import Geometry, batching

MINIMAL = """
input: {paths: [data/m.parquet]}
output: {path: out/x}
model: {source: models/m}
"""


def job_file(tmp_path: Path, text: str, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_minimal_job_takes_defaults(tmp_path):
    job = load_job(job_file(tmp_path, MINIMAL), env={})
    assert job.input.paths == ("data/m.parquet",)
    assert job.compute.device == "cpu" and job.compute.actors == 1
    assert job.params.num_inference_steps == 50
    assert job.images.allow == ()
    assert job.failure.max_failed_fraction == 0.05


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("colour: red\n", "unknown key(s) ['colour']"),
        ("compute: {gpu: 1}\n", "compute: unknown key(s) ['gpu']"),
        ("compute: {actors: two}\n", "compute.actors: expected an integer or a list of 2 items"),
        ("compute: {batch_size: 2.5}\n", "compute.batch_size: expected an integer"),
        ("storage: {anonymous: 'yes'}\n", "storage.anonymous: expected true or false"),
        ("params: {guidance_scale: high}\n", "params: guidance_scale: expected a number, got string 'high'"),
        ("params: {steps: 3}\n", "unknown DiffEdit parameter(s) ['steps']"),
        ("images: {allow: s3://b/}\n", "images.allow: expected a list"),
        ("compute: {device: tpu}\n", "compute.device: must be one of ['cpu', 'cuda']"),
        ("compute: {actors: [3, 1]}\n", "compute.actors must be >= 1 or a range"),
        ("failure: {max_failed_fraction: 2}\n", "failure.max_failed_fraction must be in [0, 1]"),
        ("compute: {device: cuda}\n", "gpus_per_actor must be > 0 when compute.device is cuda"),
        # README: "booleans never" stand in for numbers, in the job's sections and in params alike
        (
            "compute: {batch_size: true}\n",
            "compute.batch_size: expected an integer or null, got boolean True",
        ),
        ("params: {guidance_scale: false}\n", "params: guidance_scale: expected a number, got boolean False"),
        (
            "failure: {max_failed_fraction: true}\n",
            "failure.max_failed_fraction: expected a number, got boolean",
        ),
    ],
)
def test_errors_name_the_file_and_the_key(tmp_path, extra, message):
    path = job_file(tmp_path, MINIMAL + extra)
    with pytest.raises(ConfigError) as info:
        load_job(path, env={})
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_a_missing_required_key_is_named(tmp_path):
    path = job_file(tmp_path, "input: {paths: [a]}\nmodel: {source: m}\n")
    with pytest.raises(ConfigError, match=r"job.yaml: output.path is required"):
        load_job(path, env={})


def test_missing_job_file_and_missing_preset(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: file not found"):
        load_job(tmp_path / "nope.yaml", env={})
    path = job_file(tmp_path, MINIMAL + "presets: [compute/quantum]\n")
    with pytest.raises(ConfigError, match=r"presets: preset 'compute/quantum' not found .*quantum.yaml"):
        load_job(path, env={})


@pytest.mark.parametrize("key", ["key", "secret", "token", "aws_secret_access_key", "session_token"])
def test_credentials_are_refused(tmp_path, key):
    path = job_file(tmp_path, MINIMAL + f"storage: {{endpoint_url: http://x, {key}: abc123}}\n")
    with pytest.raises(ConfigError, match="credentials come only from the environment") as info:
        load_job(path, env={})
    assert f"storage: [{key!r}] not allowed" in str(info.value) and str(path) in str(info.value)
    assert "abc123" not in str(info.value)


def test_presets_merge_in_order_and_the_job_wins(tmp_path):
    configs = tmp_path / "configs"
    (configs / "compute").mkdir(parents=True)
    (configs / "compute" / "big.yaml").write_text(
        "compute: {batch_size: 32, max_batch: 64}\nparams: {guidance_scale: 3}\n"
    )
    (configs / "compute" / "bad.yaml").write_text("compute: {batch_size: many}\n")
    path = job_file(tmp_path, MINIMAL + "presets: [compute/big]\ncompute: {batch_size: 4}\n")
    job = load_job(path, env={}, configs_dir=configs)
    assert job.compute.batch_size == 4 and job.compute.max_batch == 64
    assert job.params.guidance_scale == 3.0
    # an error inside a preset names the preset's file
    path = job_file(tmp_path, MINIMAL + "presets: [compute/bad]\n", "job2.yaml")
    with pytest.raises(ConfigError, match=r"bad.yaml: compute.batch_size: expected an integer"):
        load_job(path, env={}, configs_dir=configs)


def test_interpolation_from_the_environment(tmp_path):
    text = MINIMAL.replace("out/x", '"s3://b/out/ds=${DS}/"') + "name: ${NAME:-nightly}\n"
    job = load_job(job_file(tmp_path, text), env={"DS": "2024-06-01"})
    assert job.output.path == "s3://b/out/ds=2024-06-01/"
    assert job.name == "nightly"
    with pytest.raises(ConfigError, match=r"job.yaml: output.path: environment variable DS is not set"):
        load_job(job_file(tmp_path, text), env={})
    assert interpolate("cost $${X}", {}, "f") == "cost ${X}"
    typed = (
        'failure: {max_failed_fraction: "${F}"}\nparams: {guidance_scale: "${G}", negative_prompt: "${G}"}\n'
    )
    job = load_job(job_file(tmp_path, MINIMAL + typed, "typed.yaml"), env={"F": "0.25", "G": "3"})
    assert job.failure.max_failed_fraction == 0.25 and job.params.guidance_scale == 3.0
    assert job.params.negative_prompt == "3"
    with pytest.raises(
        ConfigError, match=r"failure.max_failed_fraction: expected a number, got string 'lots'"
    ):
        load_job(job_file(tmp_path, MINIMAL + typed, "typed.yaml"), env={"F": "lots", "G": "3"})
    assert interpolate({"a": ["${A}"]}, {"A": "1"}, "f") == {"a": ["1"]}


def test_hashes(tmp_path):
    a = load_job(job_file(tmp_path, MINIMAL), env={})
    b = load_job(job_file(tmp_path, MINIMAL + "compute: {batch_size: 2}\n", "b.yaml"), env={})
    c = load_job(job_file(tmp_path, MINIMAL + "params: {guidance_scale: 1.0}\n", "c.yaml"), env={})
    assert a.config_hash != b.config_hash
    model = ModelSource("local", "/m", None, {"kind": "files", "weights_sha256": "0" * 64}, "")
    key = lambda job: results_hash(results_identity(job, model))  # noqa: E731
    assert key(a) == key(b)  # batching does not change results
    assert key(a) != key(c)
    assert build_job(a.to_dict()).config_hash == a.config_hash


def test_shipped_jobs_load():
    shapes = load_job(REPO / "jobs" / "shapes_recolor.yaml", env={})
    assert shapes.model.source == "models/shapes-v3"
    assert shapes.compute.device == "cpu" and shapes.compute.max_actors * shapes.compute.cpus_per_actor < 2
    env = {"DATA_BUCKET": "data", "MODEL_BUCKET": "models", "DS": "2024-06-01"}
    coco = load_job(REPO / "jobs" / "coco_recolor.yaml", env=env)
    assert coco.output.path == "s3://data/diffedit/outputs/coco_recolor/ds=2024-06-01/"
    assert coco.compute.device == "cuda" and coco.compute.gpus_per_actor == 1
    # README: one GPU per actor, 1 to 8 actors, float16, batch sizes from the per-family plan
    assert (coco.compute.min_actors, coco.compute.max_actors, coco.compute.dtype) == (1, 8, "float16")
    sd15 = batching(coco.compute, Geometry("sd", 512, 64))
    assert (sd15.batch_size, sd15.max_batch, sd15.vae_batch) == (
        32,
        64,
        16,
    ) and "plan sd@512px" in sd15.origin
    assert coco.images.allow == ("s3://data/coco/",)
    presets = sorted((REPO / "configs").rglob("*.yaml"))
    assert {p.stem for p in presets} >= {"cpu", "gpu", "sd15", "sd21", "shapes-v3"}
    for preset in presets:  # every preset is itself a valid partial job
        check_document(_read_yaml(preset), str(preset), allow_presets=False)
