"""Constants shared by the sections: the report schema, the section names, the stages and model groups
timed, and issue 5's targets."""

from __future__ import annotations

SCHEMA = "diffedit-perf/1"
#: Every section, and those run by default (precision and archs take many minutes and GiB: opt in).
SECTIONS = ("compare", "batch", "size", "ray", "precision", "archs")
DEFAULT_SECTIONS = ("compare", "batch", "size", "ray")
#: Stages whose seconds are reported per method; image_io and other complete the wall time.
STAGES = ("mask", "encode", "decode", "vae_encode", "vae_decode", "image_io", "other")
#: Model groups timed by hooks.
GROUPS = ("unet", "vae_encode", "vae_decode", "text")
TARGETS = {
    "speed_ratio": 1.4,
    "unet_evals_per_edit": 140,
    "model_bound_fraction": 0.85,
    "model_bound_min_batch": 4,
    "ray_ratio": 0.8,
    "ray_min_rows": 64,
}
