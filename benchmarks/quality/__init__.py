"""The quality benchmark of DiffEdit on the synthetic shapes world (``python -m benchmarks.quality``).

One responsibility a module, imported in this order (no cycles):

* ``metrics``     pure measurements: mask IoU, background PSNR/MAE, the latent-grid ceiling;
* ``ledits``      LEDITS++ as a method (and its tuning command, ``python -m benchmarks.quality.ledits``);
* ``methods``     the runners of every method and of the two reference rows;
* ``scoring``     per-task records with the strict judge's verdicts, per-run summaries;
* ``report``      CSV, text table, trade-off plot, contact sheet;
* ``degenerate``  broken "edits" (a blank, a painted canvas, an erased object, a blur, ...) that the
                  judge must fail;
* ``calibration`` the set of edits labelled by eye, and the judge's agreement with it;
* ``masks``       the mask-option study (``python -m benchmarks.quality.masks``);
* ``cli``         the benchmark's driver and command line.

``judge(task, image) -> Judgement`` is the strict judge of ``diffedit.shapes.judge``: every
benchmark, test and report uses it.
"""

from diffedit.shapes.judge import Judgement, judge

__all__ = ["Judgement", "judge"]
