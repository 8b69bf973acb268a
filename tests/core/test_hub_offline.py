"""Hub ids, offline: a hub cache laid out as huggingface_hub lays one out (models--org--name/{blobs,
snapshots/<commit>,refs/<branch>}), built from tiny models, read by ``load_bundle`` with HF_HUB_OFFLINE=1
and every socket connection refused: by branch, by commit, by tag-like branch, through ``cache_dir`` or
HF_HUB_CACHE; SD and SDXL; and an id or a revision the cache does not hold is a ``ModelNotFoundError``."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from diffedit.loading import ModelNotFoundError, load_bundle
from diffedit.tiny import save_hub_snapshot, save_tiny_model, save_tiny_sdxl_model


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hub-models")
    return {
        "sd0": save_tiny_model(root / "sd0", seed=0),
        "sd1": save_tiny_model(root / "sd1", seed=1),
        "xl": save_tiny_sdxl_model(root / "xl", seed=0),
    }


@pytest.fixture(scope="module")
def hub(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """org/tiny: first seed 0 (commit c0, also branch "v1"), then seed 1 on main (commit c1); org/tiny-xl."""
    cache = tmp_path_factory.mktemp("hf-cache")
    c0 = save_hub_snapshot(models["sd0"], cache, "org/tiny")
    save_hub_snapshot(models["sd0"], cache, "org/tiny", commit=c0, branch="v1")
    c1 = save_hub_snapshot(models["sd1"], cache, "org/tiny")
    save_hub_snapshot(models["xl"], cache, "org/tiny-xl")
    return {"cache": cache, "c0": c0, "c1": c1}


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """HF_HUB_OFFLINE=1 (the hub client reads it at import: its constant is set too), and no network."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    def refuse(self: socket.socket, address: object) -> None:
        raise AssertionError(f"network access to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.chdir(tmp_path)  # "org/tiny" is no path here


def test_cache_layout_is_the_hub_clients(hub: dict[str, object]) -> None:
    repo = Path(hub["cache"]) / "models--org--tiny"
    assert (repo / "refs" / "main").read_text() == hub["c1"] and (repo / "refs" / "v1").read_text() == hub[
        "c0"
    ]
    link = repo / "snapshots" / str(hub["c1"]) / "unet" / "config.json"
    assert link.is_symlink() and link.resolve().parent == (repo / "blobs").resolve()


def test_loads_by_hub_id_branch_and_commit_offline(hub, models, offline) -> None:
    cache = hub["cache"]
    expected = {name: load_bundle(str(models[name])).weights_hash for name in ("sd0", "sd1")}
    main = load_bundle("org/tiny", cache_dir=cache)
    assert main.source == "org/tiny" and main.weights_hash == expected["sd1"]
    assert load_bundle("org/tiny", revision=hub["c0"], cache_dir=cache).weights_hash == expected["sd0"]
    assert load_bundle("org/tiny", revision="v1", cache_dir=cache).weights_hash == expected["sd0"]
    assert load_bundle("org/tiny", revision=hub["c1"], cache_dir=cache).weights_hash == expected["sd1"]


def test_hub_cache_from_the_environment(hub, models, offline, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_CACHE", str(hub["cache"]))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub["cache"]))
    bundle = load_bundle("org/tiny-xl")
    assert bundle.family == "sdxl" and bundle.weights_hash == load_bundle(str(models["xl"])).weights_hash


def test_absent_id_or_revision_is_model_not_found(hub, offline) -> None:
    cache = hub["cache"]
    with pytest.raises(
        ModelNotFoundError, match=r"'org/absent'.*HF_HUB_OFFLINE=1.*no snapshot of org/absent"
    ):
        load_bundle("org/absent", cache_dir=cache)
    with pytest.raises(
        ModelNotFoundError, match=r"no snapshot of org/tiny@0123456789abcdef0123456789abcdef01234567"
    ):
        load_bundle("org/tiny", revision="0123456789abcdef0123456789abcdef01234567", cache_dir=cache)
    with pytest.raises(ModelNotFoundError, match="no snapshot of org/tiny@v9"):
        load_bundle("org/tiny", revision="v9", cache_dir=cache)


def test_missing_local_directory_is_model_not_found(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="no such directory"):
        load_bundle(str(tmp_path / "nothing" / "here"))
