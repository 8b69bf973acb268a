"""benchmarks.gpu (``make bench-gpu``) in its --dry mode: the tiny models on the CPU, every column of
the table, figures positive and consistent with each other."""

from __future__ import annotations

import json
import math

import torch

from benchmarks.gpu import COLUMNS, DEFAULT_EVALS, main


def test_dry_mode_writes_a_consistent_table(tmp_path):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        main(["--dry", "--out", str(tmp_path), "--batches", "1", "2"])
    finally:
        torch.set_num_threads(before)
    result = json.loads((tmp_path / "gpu.json").read_text())
    table = (tmp_path / "gpu.md").read_text().splitlines()
    assert table[2] == "| " + " | ".join(COLUMNS) + " |"
    cells = result["cells"]
    families = ["sd15", "sdxl", "sd35-medium", "flux-dev"]  # flow models through the same denoiser contract
    assert [(c["family"], c["batch"]) for c in cells] == [(f, b) for f in families for b in (1, 2)]
    assert len(table) == 4 + len(cells)
    for c in cells:
        assert c["status"] == "ok" and (c["dtype"], c["mode"]) == ("float32", "eager")
        for key in ("unet_evals_per_s", "edits_per_s", "evals_per_edit", "tflops", "utilisation"):
            assert c[key] > 0, (key, c)
        # 10 steps at encode_ratio 0.8, 2 mask draws: mask 4 + encode 8 + decode 16 (guidance 7.5: CFG)
        assert c["evals_per_edit"] == 28
        assert math.isclose(c["edits_per_s_at_140"], c["unet_evals_per_s"] / DEFAULT_EVALS)
        flops = result["flops_per_eval"][f"{c['family']}/{c['dtype']}"]
        assert math.isclose(c["tflops"], flops * c["unet_evals_per_s"] / 1e12)
        assert math.isclose(c["utilisation"], c["tflops"] / result["peak_tflops"])
        assert c["peak_gib"] is None  # no CUDA memory on the CPU
    assert result["flops_per_eval"]["sdxl/float32"] > 0 and result["seconds"] < result["budget_s"]
