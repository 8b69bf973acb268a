"""``python -m benchmarks.quality``: the quality benchmark (``benchmarks.quality.cli``)."""

from benchmarks.quality.cli import main

raise SystemExit(main())
