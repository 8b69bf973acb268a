"""Helpers of the batch-job tests (imported by the tests and by conftest.py)."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline import output as O
from pipeline.storage import parquet_bytes, read_parquet

REPO = Path(__file__).resolve().parents[2]

#: Small, fast DiffEdit parameters for the tiny model (native size 32 px).
FAST_PARAMS = {"num_inference_steps": 8, "num_mask_draws": 2}

#: A tiny COCO captions file: 4 images, 9 captions, 3 images with a colour word.
COCO = {
    "info": {"description": "tiny COCO-format fixture"},
    "images": [
        {"id": 1, "file_name": "000000000001.jpg", "width": 64, "height": 48},
        {"id": 2, "file_name": "000000000002.jpg", "width": 64, "height": 48},
        {"id": 3, "file_name": "000000000003.jpg", "width": 64, "height": 48},
        {"id": 4, "file_name": "000000000004.jpg", "width": 64, "height": 48},
    ],
    "annotations": [
        {"id": 11, "image_id": 1, "caption": "A red bus parked next to a red car."},
        {"id": 12, "image_id": 1, "caption": "A bus on a street."},
        {"id": 13, "image_id": 1, "caption": "a Red double decker bus"},
        {"id": 21, "image_id": 2, "caption": "A man eating an orange on a bench."},
        {"id": 22, "image_id": 2, "caption": "Someone sits outside."},
        {"id": 31, "image_id": 3, "caption": "An orange cat on a grey sofa."},
        {"id": 32, "image_id": 3, "caption": "A cat   sleeping."},
        {"id": 41, "image_id": 4, "caption": "Two white dogs play in the yellow grass."},
        {"id": 42, "image_id": 4, "caption": "Dogs playing."},
    ],
}


def png_bytes(
    seed: int = 0, size: tuple[int, int] = (32, 32), mode: str = "RGB", fmt: str = "PNG", **save: Any
) -> bytes:
    """An encoded image of uniform noise."""
    rng = np.random.default_rng(seed)
    a = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
    image = Image.fromarray(a, "RGB").convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def write_manifest(
    path: Path | str, rows: list[dict[str, Any]], schema: pa.Schema | None = None, fs: Any = None
) -> None:
    """Write ``rows`` as a Parquet manifest (local path, or fsspec path with ``fs``)."""
    table = pa.Table.from_pylist(rows, schema=schema)
    if fs is None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, str(path))
    else:  # an Arrow buffer, never a Python file object (pipeline.storage.arrow_filesystem)
        fs.pipe(str(path), parquet_bytes(table))


def write_job(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def s3fs_for(s3: dict) -> Any:
    import s3fs

    return s3fs.S3FileSystem(
        client_kwargs={"endpoint_url": s3["endpoint_url"]}, key="testing", secret="testing"
    )


def upload_dir(fs: Any, local: Path, remote: str) -> None:
    """Copy a local folder to ``remote`` (bucket/prefix) file by file."""
    for file in sorted(local.rglob("*")):
        if file.is_file():
            fs.pipe(f"{remote}/{file.relative_to(local).as_posix()}", file.read_bytes())


def read_output(path: Path | str, fs: Any = None) -> pa.Table:
    """Every committed part of an output folder, read with plain pyarrow (no Ray), through a pyarrow
    filesystem (never a Python file object: see pipeline.storage.arrow_filesystem)."""
    if fs is None:
        files = sorted(str(p) for p in Path(path).glob("part-*.parquet"))
        return pa.concat_tables([pq.read_table(f) for f in files]) if files else pa.table({})
    files = sorted(f for f in fs.ls(str(path), detail=False) if f.rsplit("/", 1)[-1].startswith("part-"))
    tables = [read_parquet(fs, f) for f in files]
    return pa.concat_tables(tables) if tables else pa.table({})


def cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m pipeline.cli ARGS`` in a fresh process, as a user runs it (stdout and stderr captured:
    not a TTY); an ``env`` value of None removes that variable."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v is not None}
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def snapshot(out: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``out`` with its size and mtime: equal snapshots mean nothing was rewritten."""
    return {
        str(p.relative_to(out)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in out.rglob("*")
        if p.is_file()
    }


def error_lines(text: str) -> list[str]:
    """The ``error: ...`` lines of a command's output."""
    return [line for line in text.splitlines() if line.startswith("error:")]


#: The rows of the demo manifest in ``make_checkout`` (and so in the ``finished`` fixture).
CHECKOUT_ROWS = 4


def make_checkout(root: Path, model: Path, rows: int = CHECKOUT_ROWS) -> Path:
    """A directory laid out like the repository: jobs/, the model at models/shapes-v3, a manifest."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    root.mkdir(parents=True)
    shutil.copytree(REPO / "jobs", root / "jobs")
    shutil.copytree(model, root / "models" / "shapes-v3")
    result = CliRunner().invoke(app, ["prepare", "shapes", "--out", str(root / "data" / "shapes_manifest"),
                                      "--rows", str(rows)])  # fmt: skip
    assert result.exit_code == 0, result.output
    return root


def dead_port() -> int:
    """A loopback port where nothing listens (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def installed_wheel(repo: Path, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The package built as a wheel from a clean copy of ``repo`` (no .git, .venv, out, data, build
    leftovers) and installed into a fresh venv that sees the shared dependencies through a .pth file;
    (the venv, the environment to run it with)."""
    import importlib.util

    wheels = tmp_path / "wheels"
    src = tmp_path / "src"  # a clean copy: the build must not depend on the working tree's leftovers
    shutil.copytree(repo, src, ignore=shutil.ignore_patterns(".git", ".venv", "out", "data", "build", "*.egg-info",
                                                            "__pycache__", ".pytest_cache"), symlinks=True)  # fmt: skip
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "-w", str(wheels), str(src)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = next((venv / "lib").glob("python*/site-packages"))
    shared = next(p for p in sys.path if p.endswith("site-packages") and Path(p, "pyarrow").is_dir())
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DIFFEDIT_CONFIGS")}
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q", "--no-deps",
         str(next(wheels.glob("*.whl")))], capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    # the dependencies from the shared environment, after the install (pip would otherwise see its
    # editable diffedit-batch as already installed): a plain path line, so no editable finder runs
    (site / "shared_dependencies.pth").write_text(shared + "\n")
    return venv, env


def state_file(out: Path | str, name: str) -> Path:
    """``name`` (``_SUCCESS``, ``job.json``, ...) in the state folder of the local output ``out``, the
    hidden folder beside it (``pipeline.output.state``)."""
    return Path(O.state(str(out), name))
