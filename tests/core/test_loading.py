"""diffedit.loading: local directories and file:// URLs, layout and pickle errors, the fsspec cache against
a real S3 server on loopback (sync once, reuse, re-sync on change, two processes at once), the weights hash,
hub-id errors without network, and dtype rules."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffedit.loading import (
    HASH_SIDECAR_NAME,
    MANIFEST_NAME,
    ModelLayoutError,
    ModelNotFoundError,
    ModelSourceError,
    UnsafeWeightsError,
    load_bundle,
    redact_url,
    resolve_dtype,
    sync_to_cache,
    weights_sha256,
)
from diffedit.tiny import save_tiny_model

REPO_ROOT = Path(__file__).resolve().parents[2]
UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"
WEIGHT_FILES = (UNET_WEIGHTS, "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny diffusers SD directory, built once; tests that change files work on ``model_copy``."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def model_copy(tiny_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_dir, tmp_path / "model"))


@pytest.fixture
def no_torch_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any unpickling of weights fail loudly."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.load must never be called")

    monkeypatch.setattr(torch, "load", refuse)


def perturb_unet(model_dir: Path) -> None:
    """Rewrite the UNet weights with one tensor changed (a new file, a new hash)."""
    path = model_dir / UNET_WEIGHTS
    tensors = load_file(path)
    first = sorted(tensors)[0]
    tensors[first] = tensors[first] + 1.0
    save_file(tensors, path, metadata={"format": "pt"})


def assert_unet_equals_file(bundle: object, weights_file: Path) -> None:
    saved = load_file(weights_file)
    loaded = bundle.unet.state_dict()
    assert set(loaded) == set(saved)
    for name, tensor in saved.items():
        assert torch.equal(loaded[name], tensor), name


# ------------------------------------------------------------------------------------------- local


def test_loads_local_directory_and_file_url(tiny_dir: Path, no_torch_load: None) -> None:
    bundle = load_bundle(str(tiny_dir))
    assert bundle.source == str(tiny_dir)
    assert bundle.dtype == torch.float32 and bundle.device.type == "cpu"
    assert bundle.text_encoder.dtype == torch.float32
    assert_unet_equals_file(bundle, tiny_dir / UNET_WEIGHTS)
    assert len(bundle.weights_hash) == 64
    assert bundle.scheduler_config["beta_schedule"] == "scaled_linear"
    assert bundle.encode_prompts(["a red cat"]).shape == (1, 16, 32)

    url = tiny_dir.as_uri()
    by_url = load_bundle(url)
    assert by_url.source == url
    assert by_url.weights_hash == bundle.weights_hash
    assert_unet_equals_file(by_url, tiny_dir / UNET_WEIGHTS)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda d: shutil.rmtree(d / "vae"), "vae/ missing"),
        (lambda d: (d / "unet" / "config.json").unlink(), "unet/config.json missing"),
        (
            lambda d: (d / "scheduler" / "scheduler_config.json").unlink(),
            "scheduler/ missing or empty (needs scheduler/scheduler_config.json)",
        ),
        (lambda d: (d / "tokenizer" / "tokenizer.json").unlink(), "tokenizer/ has neither tokenizer.json"),
        (lambda d: (d / UNET_WEIGHTS).unlink(), f"{UNET_WEIGHTS} missing (no weights in unet/)"),
        (lambda d: (d / "model_index.json").unlink(), "model_index.json missing"),
    ],
    ids=[
        "no-vae-dir",
        "no-unet-config",
        "no-scheduler-config",
        "no-tokenizer-files",
        "no-weights",
        "no-index",
    ],
)
def test_layout_errors_name_what_is_missing(model_copy: Path, damage, expected: str) -> None:
    damage(model_copy)
    with pytest.raises(ModelLayoutError) as caught:
        load_bundle(str(model_copy))
    assert expected in str(caught.value)
    assert str(model_copy) in str(caught.value)


def _edit_unet_config(model_dir: Path, **changes: object) -> None:
    config = json.loads((model_dir / "unet" / "config.json").read_text())
    (model_dir / "unet" / "config.json").write_text(json.dumps({**config, **changes}))


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"in_channels": 9}, "in_channels=9 but out_channels=4: an inpainting/depth UNet"),
        (
            {"time_cond_proj_dim": 256},
            "time_cond_proj_dim (a guidance-distilled UNet, e.g. LCM): not supported",
        ),
        ({"addition_embed_type": "text_time"}, "added conditions need an SDXL directory"),
    ],
    ids=["inpainting", "lcm", "added-conditions"],
)
def test_unets_diffedit_cannot_drive_are_refused_with_the_reason(
    model_copy: Path, changes: dict, expected: str
) -> None:
    """README: inpainting or depth UNets and guidance-distilled UNets are refused with a named reason,
    before any weight is read."""
    _edit_unet_config(model_copy, **changes)
    with pytest.raises(ModelLayoutError) as caught:
        load_bundle(str(model_copy))
    assert expected in str(caught.value) and str(model_copy) in str(caught.value)


def test_the_model_cache_is_diffedit_cache_else_under_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """README: the cache of remote models is ``$DIFFEDIT_CACHE``, else ``~/.cache/diffedit-batch/models``."""
    from diffedit.loading import default_cache_dir

    monkeypatch.setenv("DIFFEDIT_CACHE", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("DIFFEDIT_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "diffedit-batch" / "models"


def test_model_index_without_an_entry(model_copy: Path) -> None:
    index = json.loads((model_copy / "model_index.json").read_text())
    del index["vae"]
    (model_copy / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLayoutError, match=r"model_index\.json has no 'vae' entry"):
        load_bundle(str(model_copy))


def test_missing_path_and_single_file_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match="no such directory"):
        load_bundle(str(tmp_path / "nowhere" / "model"))
    single = tmp_path / "model.safetensors"
    single.write_bytes(b"\0" * 8)
    with pytest.raises(ModelLayoutError, match="not a directory"):
        load_bundle(str(single))


def test_pickle_only_component_is_refused(model_copy: Path, no_torch_load: None) -> None:
    (model_copy / UNET_WEIGHTS).unlink()
    (model_copy / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(
        UnsafeWeightsError, match=r"pickle checkpoints are refused.*diffusion_pytorch_model\.bin"
    ):
        load_bundle(str(model_copy))


def test_variant_only_weights_are_named(model_copy: Path) -> None:
    (model_copy / UNET_WEIGHTS).rename(model_copy / "unet" / "diffusion_pytorch_model.fp16.safetensors")
    with pytest.raises(ModelLayoutError, match=r"variant weights"):
        load_bundle(str(model_copy))


# ------------------------------------------------------------------------------------------- weights hash


def test_weights_hash_is_stable_cached_and_tracks_changes(model_copy: Path) -> None:
    first = weights_sha256(model_copy, WEIGHT_FILES)
    assert weights_sha256(model_copy, reversed(WEIGHT_FILES)) == first  # order of the arguments is irrelevant
    sidecar = json.loads((model_copy / HASH_SIDECAR_NAME).read_text())
    assert sidecar["sha256"] == first

    # A second call trusts the sidecar while (path, size, mtime) match: it does not rehash.
    (model_copy / HASH_SIDECAR_NAME).write_text(json.dumps({**sidecar, "sha256": "remembered"}))
    assert weights_sha256(model_copy, WEIGHT_FILES) == "remembered"

    perturb_unet(model_copy)
    changed = weights_sha256(model_copy, WEIGHT_FILES)
    assert changed not in (first, "remembered")
    bundle = load_bundle(str(model_copy))
    assert bundle.weights_hash == changed
    assert load_bundle(str(model_copy)).weights_hash == changed


def test_weights_hash_when_the_sidecar_cannot_be_written(
    model_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import diffedit.loading.hashing

    expected = weights_sha256(model_copy, WEIGHT_FILES)
    (model_copy / HASH_SIDECAR_NAME).unlink()

    def read_only(path: Path, obj: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(diffedit.loading.hashing, "write_json_atomic", read_only)
    assert weights_sha256(model_copy, WEIGHT_FILES) == expected
    assert not (model_copy / HASH_SIDECAR_NAME).exists()


# ------------------------------------------------------------------------------------------- s3 cache


def _s3fs(s3: dict):
    import s3fs

    return s3fs.S3FileSystem(**s3["storage_options"])


def _cache_state(cache: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(cache)): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in cache.rglob("*")
        if p.is_file()
    }


def test_s3_load_syncs_once_reuses_and_resyncs_on_change(
    s3: dict, model_copy: Path, tmp_path: Path, no_torch_load: None
) -> None:
    fs = _s3fs(s3)
    remote = f"{s3['bucket']}/models/tiny"
    fs.put(str(model_copy), remote, recursive=True)
    url = f"s3://{remote}"
    cache = tmp_path / "cache"
    options = s3["storage_options"]

    first = sync_to_cache(url, cache_dir=cache, storage_options=options)
    assert set(first.downloaded) >= {"model_index.json", *WEIGHT_FILES} and first.reused == ()
    bundle = load_bundle(url, cache_dir=cache, storage_options=options)
    assert bundle.source == url
    assert bundle.weights_hash == weights_sha256(model_copy, WEIGHT_FILES)
    assert_unet_equals_file(bundle, model_copy / UNET_WEIGHTS)
    entries = sorted(p.name for p in cache.iterdir())
    assert entries == [first.path.name, first.lock_path.name]  # no temp folders left behind

    # Unchanged remote: nothing is fetched, no cached file is rewritten.
    before = _cache_state(cache)
    again = load_bundle(url, cache_dir=cache, storage_options=options)
    assert again.weights_hash == bundle.weights_hash
    assert sync_to_cache(url, cache_dir=cache, storage_options=options).downloaded == ()
    assert _cache_state(cache) == before

    # No credential reaches the cache's metadata.
    for meta in (first.path / MANIFEST_NAME, first.path / HASH_SIDECAR_NAME):
        assert options["secret"] not in meta.read_text()

    # A changed remote weight file: only that file is fetched again, and the new weights are loaded.
    perturb_unet(model_copy)
    fs.put(str(model_copy / UNET_WEIGHTS), f"{remote}/{UNET_WEIGHTS}")
    resync = sync_to_cache(url, cache_dir=cache, storage_options=options)
    assert resync.downloaded == (UNET_WEIGHTS,)
    assert "vae/diffusion_pytorch_model.safetensors" in resync.reused
    changed = load_bundle(url, cache_dir=cache, storage_options=options)
    assert changed.weights_hash != bundle.weights_hash
    assert changed.weights_hash == weights_sha256(model_copy, WEIGHT_FILES)
    assert_unet_equals_file(changed, model_copy / UNET_WEIGHTS)
    assert sorted(p.name for p in cache.iterdir()) == entries


def test_s3_layout_is_checked_before_downloading(s3: dict, model_copy: Path, tmp_path: Path) -> None:
    fs = _s3fs(s3)
    cache = tmp_path / "cache"
    with pytest.raises(ModelLayoutError, match=r"s3://test-bucket/empty: .*model_index.json missing"):
        load_bundle("s3://test-bucket/empty", cache_dir=cache, storage_options=s3["storage_options"])

    (model_copy / UNET_WEIGHTS).unlink()
    (model_copy / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not really a pickle")
    fs.put(str(model_copy), f"{s3['bucket']}/pickled", recursive=True)
    with pytest.raises(UnsafeWeightsError, match="pickle"):
        load_bundle("s3://test-bucket/pickled", cache_dir=cache, storage_options=s3["storage_options"])
    assert not cache.exists()  # refused from the listing: nothing was downloaded


WORKER = """
import json, os, sys, time
from pathlib import Path

import diffusers, transformers  # imported before the start signal, so that the syncs overlap

from diffedit.loading import load_bundle, sync_to_cache

url, cache, ready, go = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
options = json.loads(os.environ["TEST_STORAGE_OPTIONS"])
ready.touch()
while not go.exists():
    time.sleep(0.01)
synced = sync_to_cache(url, cache_dir=cache, storage_options=options)
bundle = load_bundle(url, cache_dir=cache, storage_options=options)
print(json.dumps({"downloaded": list(synced.downloaded), "hash": bundle.weights_hash}))
"""


def test_concurrent_processes_share_one_cache(s3: dict, tiny_dir: Path, tmp_path: Path) -> None:
    fs = _s3fs(s3)
    remote = f"{s3['bucket']}/models/shared"
    fs.put(str(tiny_dir), remote, recursive=True)
    url, cache, go = f"s3://{remote}", tmp_path / "cache", tmp_path / "go"
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
        "TEST_STORAGE_OPTIONS": json.dumps(s3["storage_options"]),  # not on the command line
    }
    workers = []
    for i in range(2):
        ready, out, err = (tmp_path / f"{name}{i}" for name in ("ready", "out", "err"))
        with out.open("w") as stdout, err.open("w") as stderr:
            args = [sys.executable, str(script), url, str(cache), str(ready), str(go)]
            workers.append((subprocess.Popen(args, stdout=stdout, stderr=stderr, env=env), ready, out, err))
    try:
        deadline = time.monotonic() + 120
        while not all(ready.exists() for _, ready, _, _ in workers):
            for proc, _, _, err in workers:
                assert proc.poll() is None, err.read_text()[-3000:]
            assert time.monotonic() < deadline, "workers did not start"
            time.sleep(0.05)
        go.touch()
        results = []
        for proc, _, out, err in workers:
            assert proc.wait(timeout=120) == 0, err.read_text()[-3000:]
            results.append(json.loads(out.read_text().strip().splitlines()[-1]))
    finally:
        for proc, *_ in workers:
            if proc.poll() is None:
                proc.kill()

    wanted = sorted(next(r["downloaded"] for r in results if r["downloaded"]))
    assert sorted(len(r["downloaded"]) for r in results) == [0, len(wanted)]  # one synced, one reused
    assert {r["hash"] for r in results} == {weights_sha256(tiny_dir, WEIGHT_FILES)}
    folders = [p for p in cache.iterdir() if p.is_dir()]
    assert len(folders) == 1 and not folders[0].name.startswith(".")  # no temp folders left
    synced_files = sorted(
        str(p.relative_to(folders[0]))
        for p in folders[0].rglob("*")
        if p.is_file() and not p.name.startswith(".")
    )
    assert synced_files == wanted
    for rel in wanted:
        assert (folders[0] / rel).read_bytes() == (tiny_dir / rel).read_bytes()


# ------------------------------------------------------------------------------------------- hub, urls


def test_hub_id_without_network_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Offline and not cached: the model is not found (a rerun would not find it either)."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time
    monkeypatch.chdir(tmp_path)  # so that "some-org/some-model" is not a path here
    with pytest.raises(ModelNotFoundError, match=r"'some-org/some-model'.*HF_HUB_OFFLINE=1.*no snapshot"):
        load_bundle("some-org/some-model", cache_dir=tmp_path / "hf")


def test_revision_only_for_hub_ids(tiny_dir: Path) -> None:
    with pytest.raises(ValueError, match="revision"):
        load_bundle(str(tiny_dir), revision="main")


def test_redact_url_strips_credentials() -> None:
    assert redact_url("s3://AKIAKEY:s3cr3t@bucket/models/sd") == "s3://bucket/models/sd"
    redacted = redact_url("https://host/m?X-Amz-Signature=abc123&versionId=7")
    assert "abc123" not in redacted and "versionId=7" in redacted
    assert redact_url("simplecache::s3://u:p@b/m") == "simplecache::s3://b/m"
    assert redact_url("/plain/path") == "/plain/path"


# ------------------------------------------------------------------------------------------- dtype


def test_resolve_dtype() -> None:
    assert resolve_dtype("cpu") == torch.float32
    assert resolve_dtype("cuda") == torch.float16
    assert resolve_dtype(torch.device("cuda", 0), "bf16") == torch.bfloat16
    assert resolve_dtype("cpu", "bfloat16") == torch.bfloat16
    assert resolve_dtype("cpu", "float32") == resolve_dtype("cpu", torch.float32) == torch.float32
    assert resolve_dtype("cuda", "fp16") == resolve_dtype("cuda", "torch.float16") == torch.float16
    with pytest.raises(ValueError, match="float16 on CPU is refused"):
        resolve_dtype("cpu", "fp16")
    with pytest.raises(ValueError, match="float16 on CPU is refused"):
        resolve_dtype("cpu", torch.float16)
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        resolve_dtype("cpu", "int8")
    with pytest.raises(ValueError, match="unsupported dtype"):
        resolve_dtype("cpu", torch.float64)


def test_load_in_bfloat16_on_cpu_moves_every_module(tiny_dir: Path) -> None:
    with pytest.raises(ValueError, match="float16 on CPU"):
        load_bundle(str(tiny_dir), dtype="float16")
    bundle = load_bundle(str(tiny_dir), dtype="bf16")
    assert bundle.unet.dtype == bundle.vae.dtype == bundle.text_encoder.dtype == torch.bfloat16
