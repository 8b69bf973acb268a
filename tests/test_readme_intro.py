"""Issue 20, item 12: README opens for a newcomer: what it does, the demo's preview picture, a
three-step quick start with how long it takes, one paragraph on how DiffEdit works; the reference
(every `## ` section) comes after."""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_opens_with_the_newcomer_intro():
    text = (ROOT / "README.md").read_text()
    intro = text.split("\n## ", 1)[0]
    assert len(intro.splitlines()) < 50  # short: the reference follows
    picture = re.search(r"!\[[^\]]*\]\(([^)]+\.png)\)", intro)
    assert picture, "the demo's preview picture"
    with Image.open(ROOT / picture.group(1)) as image:
        assert image.format == "PNG" and image.width >= 300
    steps = re.findall(r"^(\d)\. (.+)$", intro, flags=re.M)
    assert [n for n, _ in steps] == ["1", "2", "3"]
    assert steps[0][1].startswith("`make install`") and steps[1][1].startswith("`make demo`")
    assert re.search(r"about \d+ minutes", intro) and re.search(r"\(~\d+ s\)", intro)  # the demo's time
    assert "**How DiffEdit works.**" in intro and "mask" in intro.split("**How DiffEdit works.**")[1]
