"""Performance benchmark of DiffEdit (issue 5): our ``DiffEditor`` side by side with diffusers' deprecated
``StableDiffusionDiffEditPipeline``, the model-bound fraction, the Ray job's throughput, and scaling.

    python -m benchmarks.perf --model models/shapes-v3 --rows 16 --out out/perf.json

Sections (``--sections``; by default compare, batch, size and ray), every one on the same model, rows,
seeds and parameters:

* ``compare``  ours and diffusers' pipeline over the same ``--rows`` held-out shapes edit tasks, in
  batches of ``--batch`` rows, ``--repeats`` passes, interleaved batch by batch (which method goes
  first alternates) so that drifting background load hits both alike; the speed ratio is the median
  of the ratios of adjacent batch pairs (the ratio of total times is reported too, and is hostage to
  load spikes). Each method first runs one untimed warm-up batch. Ours:
  ``DiffEditor.edit`` (a fresh editor, so a cold prompt cache) with ``max_batch=--max-batch`` samples
  per UNet call. Theirs: ``generate_mask`` + ``invert`` + ``__call__`` per batch with the same
  parameters (steps, n = ``num_maps_per_mask``, mask strength, r = ``inpaint_strength``, guidance in
  all three calls) and one generator per batch seeded with the batch's first row seed (diffusers then
  batches its VAE encodes; a list of generators would encode image by image). Image I/O, timed apart,
  is the PNG decode of the inputs and the PNG encode of the outputs (edit and mask) for both.
  Printed: edits/s, seconds per stage, UNet sample-evaluations per edit and the model-bound fraction.
* ``batch``    ours at batch sizes ``--batch-sizes`` (rows per ``edit`` call) over ``--scaling-rows``
  rows at ``--scaling-steps`` DDIM steps: seconds per edit, UNet ms per sample, model-bound fraction.
* ``size``     ours at image sizes ``--sizes`` on tiny random models whose UNet is
  ``tiny_components(sample_size=size / stride)``; with ``--size-vae-stride 8`` (default) the VAE is a
  tiny four-block AutoencoderKL of Stable Diffusion's stride 8, so the UNet runs at size / 8 as SD's
  does (512 px -> 64x64 latents); stride 2 keeps ``tiny_components``' own two-block VAE (512 px ->
  256x256 latents, minutes per edit on a CPU).
* ``ray``      the batch job (``pipeline.job.run_job``) in-process over a manifest of ``--ray-rows``
  rows (PNG bytes inline), against the in-process editor on the same rows, batch size, parameters and
  torch threads. ``ray.init`` is timed and reported apart; the job's time (everything ``run_job``
  does: manifest checks, the actor's model load, fetch/decode, edit, PNG encode, commits, summary) is
  what its rows/s is computed from. The in-process model load is reported apart too.
* ``precision`` (opt in) float32, bfloat16, float16, channels_last, bfloat16 + channels_last and
  ``torch.compile`` of the UNet side by side on ``--model``: speed in paired batches (median of the
  per-batch ratios to float32), graphs compiled (warm-up / timed: a batch composition never
  recompiles), and quality on ``--quality-tasks`` of the quality benchmark's tasks with
  paired-bootstrap deltas of success and background PSNR (``precision.py``). Minutes per variant.
* ``archs``    (opt in) SD 1.5, SD 2.1 and SDXL at full width, random weights from the published
  configs (``fullsize.py``, ``arch_configs/``): parameters, peak RSS, seconds per UNet evaluation at
  ``--arch-size`` pixels, FLOPs per call at native size (counted on the meta device), UNet
  evaluations per edit, the edit through ``DiffEditor`` and through the Ray job, one child process
  per architecture and step (``archs.py``). SDXL needs about 7 GB in bfloat16.

Model time is measured with forward pre-hooks and hooks (``time.perf_counter``, CUDA synchronised) on
the UNet, the VAE's encoder (+ quant_conv) and decoder (+ post_quant_conv), and the text encoder; the
UNet hook also counts the samples of every call, so evaluations per edit are counted, not computed.
The model-bound fraction is (UNet + VAE forward seconds) / wall seconds of the editor's ``edit`` calls.

Writes a JSON of every figure (``--out``) with the machine (CPU model, cores, torch threads, versions,
load average before and after each section) and the settings, and prints a summary with the targets
of issue 5. ``--profile PATH`` also runs ours once more under cProfile (untimed) and saves the stats.

Modules, one per section: ``rows`` (the edit tasks), ``timing`` (hooks), ``methods`` (ours and
diffusers'), ``compare``, ``scaling`` (``batch`` and ``size``), ``ray_section``, ``precision``,
``archs`` (with ``fullsize``, the random-weight builder), ``report`` (the printed summary and the
targets), ``cli`` (arguments and dispatch).
"""

from benchmarks.perf.cli import main, parse_args, run
from benchmarks.perf.common import GROUPS, SCHEMA, SECTIONS, STAGES, TARGETS
from benchmarks.perf.report import evaluate_targets, format_report
from benchmarks.perf.rows import BenchRow, make_rows
from benchmarks.perf.timing import MethodStats, ModelTimer, split_unet_calls

__all__ = [
    "GROUPS",
    "SCHEMA",
    "SECTIONS",
    "STAGES",
    "TARGETS",
    "BenchRow",
    "MethodStats",
    "ModelTimer",
    "evaluate_targets",
    "format_report",
    "main",
    "make_rows",
    "parse_args",
    "run",
    "split_unet_calls",
]
