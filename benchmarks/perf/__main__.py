"""``python -m benchmarks.perf``: see the package docstring."""

from benchmarks.perf.cli import main

raise SystemExit(main())
