"""README's crontab line, run exactly as cron runs it (issue 9, item 8): taken from README.md, `\\%`
unescaped as cron does, then `env -i /bin/sh -c LINE` with cron's PATH. Stand-ins: the CLI (exits
with a chosen code, records its environment) and `mail` (records its subject and body); the paths
of /opt, /var/log and /var/lock are moved into a temporary directory."""

from __future__ import annotations

import fcntl
import re
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def crontab_line() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Scheduling") :]
    start = section.index("```cron\n") + len("```cron\n")
    lines = [ln for ln in section[start : section.index("```", start)].splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def cron_command(line: str) -> str:
    """The command of a crontab line as cron hands it to /bin/sh: after the five time fields, with
    `\\%` unescaped (an unescaped `%` would end the command: the rest goes to its stdin)."""
    command = re.split(r"\s+", line.strip(), maxsplit=5)[5]
    assert re.search(r"(?<!\\)%", command) is None, "an unescaped % in a crontab line ends the command"
    return command.replace("\\%", "%")


@pytest.fixture
def box(tmp_path: Path) -> dict:
    app = tmp_path / "opt" / "diffedit-batch"
    (app / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / "log").mkdir()
    (tmp_path / "lock").mkdir()
    (tmp_path / "bin").mkdir()
    cli = app / ".venv" / "bin" / "diffedit-batch"
    cli.write_text(
        "#!/bin/sh\n"
        f'echo "cwd=$(pwd) args=$* DS=$DS DATA_BUCKET=$DATA_BUCKET MODEL_BUCKET=$MODEL_BUCKET" >> {tmp_path}/calls\n'
        f'sleep "$(cat {tmp_path}/sleep 2>/dev/null || echo 0)"\n'
        f'echo "the run\'s own output" \n'
        f'exit "$(cat {tmp_path}/code)"\n'
    )
    mail = tmp_path / "bin" / "mail"
    mail.write_text(f'#!/bin/sh\n{{ echo "args: $*"; cat; }} >> {tmp_path}/mail.out\n')
    for f in (cli, mail):
        f.chmod(0o755)
    return {"root": tmp_path, "app": app}


def run_cron(box: dict, code: int, *, sleep: float = 0, timeouts: tuple[str, str] | None = None):
    root: Path = box["root"]
    (root / "code").write_text(str(code))
    (root / "sleep").write_text(str(sleep))
    command = (
        cron_command(crontab_line())
        .replace("/opt/diffedit-batch", str(box["app"]))
        .replace("/var/log/diffedit/", f"{root}/log/")
        .replace("/var/lock/", f"{root}/lock/")
    )
    if timeouts:
        command = command.replace("timeout -k 5m 10h", f"timeout -k {timeouts[0]} {timeouts[1]}")
        assert timeouts[1] in command
    env = ["env", "-i", f"PATH={root}/bin:/usr/bin:/bin", f"HOME={root}", "SHELL=/bin/sh", "LOGNAME=cron"]
    return subprocess.run([*env, "/bin/sh", "-c", command], capture_output=True, text=True, timeout=120)


def yesterday() -> str:
    return (datetime.now(timezone.utc) - timedelta(days=1)).strftime("%Y-%m-%d")


def mail(box: dict) -> str:
    path = box["root"] / "mail.out"
    return path.read_text() if path.exists() else ""


def test_the_line_is_a_valid_crontab_entry_with_overlap_protection_and_a_bound():
    line = crontab_line()
    assert line.split()[:5] == ["0", "2", "*", "*", "*"]
    command = cron_command(line)
    assert "flock -n" in command and "timeout " in command


@pytest.mark.parametrize("code", [1, 2, 3, 4])
def test_a_failed_run_mails_its_date_and_exit_code(box, code):
    """Before: `DS=$(...) cmd || echo "$DS"` mailed an empty date (the assignment is cmd's only)."""
    run_cron(box, code)
    calls = (box["root"] / "calls").read_text().splitlines()
    assert calls == [
        f"cwd={box['app']} args=run jobs/coco_recolor.yaml DS={yesterday()} "
        "DATA_BUCKET=my-data-bucket MODEL_BUCKET=my-model-bucket"
    ]
    sent = mail(box)
    assert f"args: -s diffedit coco_recolor {yesterday()}: exit {code} ops@example.com" in sent
    assert f"diffedit coco_recolor DS={yesterday()} failed: exit {code}" in sent
    assert "the run's own output" in (box["root"] / "log" / "coco_recolor.log").read_text()


def test_a_successful_run_mails_nothing(box):
    result = run_cron(box, 0)
    assert result.returncode == 0
    assert mail(box) == "" and len((box["root"] / "calls").read_text().splitlines()) == 1


def test_an_overlapping_run_does_not_start_and_says_so(box):
    lock = box["root"] / "lock" / "diffedit-coco_recolor.lock"
    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # the night before's run still holds it
        run_cron(box, 0)
    assert not (box["root"] / "calls").exists()  # the CLI never started
    assert f"{yesterday()}: exit 75" in mail(box)


def test_a_run_past_its_bound_is_stopped_and_reported(box):
    start = time.monotonic()
    run_cron(box, 0, sleep=60, timeouts=("5s", "2s"))
    assert time.monotonic() - start < 30
    assert f"{yesterday()}: exit 124" in mail(box)
