"""README's library example runs as written (on the bundled model)."""

from __future__ import annotations

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
