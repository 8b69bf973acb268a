"""Issue 10, item 5: job-level limits on what a row's overrides may cost; item 1 at the stage level:
a transient storage error is raised, never a failed row."""

from __future__ import annotations

import pyarrow as pa
import pytest
from pipeline_testing import FAST_PARAMS, png_bytes

from diffedit.params import EditParams
from pipeline import rows as R
from pipeline.config import ConfigError, ImagesConfig, LimitsConfig, StorageConfig, build_job
from pipeline.faults import TransientStorageError
from pipeline.limits import unet_evals_bound
from pipeline.stages import fetch_rows

PARAMS = EditParams.from_dict(FAST_PARAMS)
SCHEMA = pa.schema([("id", pa.string()), ("image", pa.string()), ("image_bytes", pa.binary()),
                    ("caption", pa.string()), ("query", pa.string()), ("num_inference_steps", pa.int64()),
                    ("num_mask_draws", pa.int64()), ("encode_ratio", pa.float64())])  # fmt: skip


def fetch(rows: list[dict], limits: LimitsConfig | None = None, **kw) -> dict[str, dict]:
    batch = pa.Table.from_pylist(rows, schema=SCHEMA)
    out = fetch_rows(batch, params=PARAMS, images=ImagesConfig(**kw), storage=StorageConfig(), limits=limits)
    return {r["id"]: r for r in out.to_pylist()}


def test_rows_over_a_limit_fail_naming_the_key():
    img = png_bytes(0, (16, 16))
    q = {"image_bytes": img, "caption": "a red circle", "query": "a blue circle"}
    rows = fetch(
        [
            {"id": "fine", **q, "num_inference_steps": 200, "num_mask_draws": 64},
            {"id": "steps", **q, "num_inference_steps": 100_000},
            {"id": "draws", **q, "num_mask_draws": 100_000},
            {"id": "long", **{**q, "query": "blue " * 500}},
        ]
    )
    assert rows["fine"]["status"] == R.OK, rows["fine"]["error"]
    assert rows["steps"]["status"] == R.FAILED
    assert "num_inference_steps 100000 is above limits.max_inference_steps = 200" in rows["steps"]["error"]
    assert "num_mask_draws 100000 is above limits.max_mask_draws = 64" in rows["draws"]["error"]
    assert "query has 2500 characters, above limits.max_prompt_chars = 2000" in rows["long"]["error"]
    tight = fetch([{"id": "fine", **q, "num_inference_steps": 50}], LimitsConfig(max_unet_evals=20))
    assert "above limits.max_unet_evals = 20" in tight["fine"]["error"]


def test_unet_evals_bound_counts_mask_encode_and_guided_decode():
    p = EditParams.from_dict({"num_mask_draws": 10, "num_inference_steps": 50, "encode_ratio": 0.8})
    assert unet_evals_bound(p) == 2 * 10 + 3 * 40


def test_job_params_and_limits_are_checked_when_the_job_loads():
    base = {"input": {"paths": ["m"]}, "output": {"path": "o"}, "model": {"source": "x/y"}}
    raised = {"max_inference_steps": 1000, "max_unet_evals": 2000}
    assert build_job({**base, "limits": raised, "params": {"num_inference_steps": 500}})
    with pytest.raises(
        ConfigError,
        match=r"params: over a job limit: num_inference_steps 500 is above limits\.max_inference_steps = 200",
    ):
        build_job({**base, "params": {"num_inference_steps": 500}})
    with pytest.raises(ConfigError, match=r"limits\.max_mask_draws must be >= 1"):
        build_job({**base, "limits": {"max_mask_draws": 0}})
    with pytest.raises(ConfigError, match=r"limits: unknown key\(s\) \['max_steps'\]"):
        build_job({**base, "limits": {"max_steps": 3}})
    # the limits are not part of the results' identity: raising one and retrying the failed rows
    # (--retry-failed) continues the same output
    a = build_job(base)
    b = build_job({**base, "limits": {"max_inference_steps": 1000}})
    assert a.results_hash == b.results_hash and a.config_hash != b.config_hash


def test_a_storage_outage_during_fetch_raises_instead_of_failing_rows():
    """Nothing listens on the endpoint: connection refused on every attempt. The stage raises (the run
    fails, the row is not committed); before issue 10 the row was committed as failed for ever."""
    import socket

    with socket.socket() as s:  # a port with nothing behind it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    storage = StorageConfig(
        endpoint_url=f"http://127.0.0.1:{port}", max_attempts=2, connect_timeout=1, read_timeout=1
    )
    batch = pa.Table.from_pylist(
        [{"id": "a", "image": "s3://bucket/x.png", "caption": "c", "query": "q"}], schema=SCHEMA
    )
    with pytest.raises(
        TransientStorageError,
        match=r"cannot read image s3://bucket/x\.png after retries .*EndpointConnectionError",
    ):
        fetch_rows(batch, params=PARAMS, images=ImagesConfig(allow=("s3://bucket/",)), storage=storage)
