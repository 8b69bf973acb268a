"""Full-size SD3.5-medium and FLUX.1 from their published configs, on the meta device (no weights):
the parameter counts equal the published ones, and one evaluation's FLOPs are counted."""

from __future__ import annotations

from benchmarks.fullsize import PUBLISHED, components, count, report


def test_parameter_counts_equal_the_published_ones():
    sd35 = components("sd3.5-medium")
    total = sum(count(sd35[k]) for k in ("transformer", "CLIP-L", "CLIP-G", "VAE"))
    assert total == PUBLISHED["sd3.5-medium CLIP-L + CLIP-G + transformer + VAE"]  # keras-hub's exact figure
    assert abs(count(sd35["transformer"]) - 2.5e9) / 2.5e9 < 0.02  # the model card's "2.5 billion"
    flux = components("flux-dev")
    assert count(flux["transformer"]) == 11_901_408_320  # the 23.8 GB bf16 checkpoint
    assert count(flux["T5-XXL"]) == 4_762_310_656
    assert count(components("flux-schnell")["transformer"]) < count(
        flux["transformer"]
    )  # no guidance embedding


def test_report_counts_flops_per_evaluation_at_a_reduced_size():
    lines = report(256)
    rows = {line.split(" | ")[0].strip("| "): line for line in lines if "T |" in line}
    assert set(rows) == {"sd3.5-medium", "flux-dev", "flux-schnell"}
    flops = {k: float(v.split(" | ")[1].rstrip(" T")) for k, v in rows.items()}
    assert 0 < flops["sd3.5-medium"] < flops["flux-dev"]
    assert "20 + 22 + 22 = 64" in rows["flux-dev"]
