"""README's library example runs as written (on the bundled model); its list of output columns is the
output's schema; every test that docs/promises.md names for a README promise exists."""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def test_readme_library_example_runs_as_written(tmp_path, monkeypatch, capsys):
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## The library") :]
    start = section.index("```python\n") + len("```python\n")
    code = section[start : section.index("```", start)]
    (tmp_path / "models").symlink_to(ROOT / "models")  # the example's relative model path
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    edit, mask = Image.open(tmp_path / "edit.png"), Image.open(tmp_path / "mask.png")
    assert edit.size == mask.size == (64, 64) and edit.mode == "RGB"
    assert "UNet evaluations" in capsys.readouterr().out


#: Words in backticks in README's "Each output row" paragraph that are values or names, not columns.
NOT_COLUMNS = {"ok", "failed", "unchanged: ...", "truncated: ...", "bytes", "path", "output", "filter",
               "sd", "sdxl", "huggingface", "datasets", "scoring.clip_model"}  # fmt: skip


def test_readme_lists_exactly_the_output_columns():
    """README, "Each output row: ...": every column it names is in ``OUTPUT_SCHEMA`` and every column of
    the schema is named there, the DiffEdit parameters as "every effective DiffEdit parameter"."""
    from diffedit.params import EditParams
    from pipeline.rows import OUTPUT_SCHEMA

    text = (ROOT / "README.md").read_text()
    start = text.index("Each output row:")
    paragraph = text[start : text.index("\n\n", start)]
    assert (
        "every effective\nDiffEdit parameter" in paragraph
        or "every effective DiffEdit parameter" in paragraph
    )
    named = set(re.findall(r"`([^`]+)`", paragraph)) - NOT_COLUMNS
    schema = set(OUTPUT_SCHEMA.names)
    assert named - schema == set(), "README names columns the output does not have"
    assert schema - named - set(EditParams.field_names()) == set(), "columns README does not name"


def test_every_test_the_promises_table_names_exists():
    """``docs/promises.md`` pairs each README promise with the tests that hold it: every
    ``tests/...py::name`` it names is a test function in that file (a renamed or deleted test leaves a
    promise unheld, and the table would not say so)."""
    table = (ROOT / "docs" / "promises.md").read_text()
    named = set(re.findall(r"(tests/[\w/]+\.py)::(\w+)", table))
    assert len(named) > 300, len(named)  # the table's references were found at all
    missing = [
        f"{path}::{name}"
        for path, name in sorted(named)
        if not (ROOT / path).is_file() or not re.search(rf"^\s*def {name}\(", (ROOT / path).read_text(), re.M)
    ]
    assert missing == [], missing
