"""Rules of the suite itself (issue 21): a missing prerequisite skips a test locally but fails it in CI
(``CI=true``), so CI can never stay green by skipping; no test skips itself any other way; no test
reaches the Hugging Face Hub."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

#: Files allowed a skip of their own, each for a stated reason (owned elsewhere; to be removed there).
ALLOWED_SKIPS = {
    # the quality judge is being replaced (issue 21 item 6, the lead's); its guard goes with it
    "benchmarks/test_quality.py",
    # the readers test (issue 20 item 9) makes its DuckDB/polars branches required
    "pipeline/test_operations.py",
}
SKIP = re.compile(r"pytest\.skip\(|importorskip\(|mark\.skipif|mark\.skip\b|mark\.xfail")


def test_require_skips_locally_and_fails_in_ci(require, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="needs a thing"):
        require(False, "needs a thing")
    for value in ("true", "1", "TRUE"):
        monkeypatch.setenv("CI", value)
        with pytest.raises(
            pytest.fail.Exception, match=r"prerequisite missing in CI \(CI=true\): needs a thing"
        ):
            require(False, "needs a thing")
    require(True, "never shown")  # a met prerequisite neither skips nor fails


def test_no_test_skips_itself_except_through_require():
    """A bare ``pytest.skip`` (or ``importorskip``, ``skipif``) passes CI silently when a prerequisite is
    missing: tests/ops/test_cluster.py skipped all 7 cluster tests that way."""
    offenders = {}
    for path in sorted(TESTS.rglob("*.py")):
        rel = path.relative_to(TESTS).as_posix()
        if rel in ALLOWED_SKIPS or path == Path(__file__) or rel == "conftest.py":
            continue
        lines = [n for n, line in enumerate(path.read_text().splitlines(), 1) if SKIP.search(line)]
        if lines:
            offenders[rel] = lines
    assert offenders == {}


def test_ci_runs_set_ci_true():
    """.ci/run sets CI=true (when the CI system has not), so its test targets fail on a missing
    prerequisite."""
    text = (TESTS.parent / ".ci" / "run").read_text()
    assert 'export CI="${CI:-true}"' in text
    assert text.index("export CI=") < text.index("make test")


def test_the_suite_is_offline_from_the_hub():
    import huggingface_hub.constants

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert huggingface_hub.constants.HF_HUB_OFFLINE is True
