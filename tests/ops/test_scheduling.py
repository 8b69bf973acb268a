"""README's crontab line, run exactly as cron runs it (issue 9, item 8): taken from README.md, `\\%`
unescaped as cron does, then `env -i /bin/sh -c LINE` with cron's PATH. Stand-ins: the CLI (exits
with a chosen code, records its environment) and `mail` (records its subject and body); the paths
of /opt, /var/log and /var/lock are moved into a temporary directory."""

from __future__ import annotations

import fcntl
import re
import subprocess
import sys
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
        f'if [ -f {tmp_path}/ignore_term ]; then trap "" TERM; fi\n'
        f'sleep "$(cat {tmp_path}/sleep 2>/dev/null || echo 0)"\n'
        f'echo "the run\'s own output" \n'
        f'exit "$(cat {tmp_path}/code)"\n'
    )
    mail = tmp_path / "bin" / "mail"
    mail.write_text(f'#!/bin/sh\n{{ echo "args: $*"; cat; }} >> {tmp_path}/mail.out\n')
    for f in (cli, mail):
        f.chmod(0o755)
    return {"root": tmp_path, "app": app}


def run_cron(
    box: dict,
    code: int = 0,
    *,
    sleep: float = 0,
    timeouts: tuple[str, str] | None = None,
    seconds: float = 120,
) -> subprocess.CompletedProcess:
    """Run the crontab line in ``box`` (the stand-in CLI exits ``code`` after ``sleep`` seconds). The
    dates the line may have taken for yesterday (the day before the start or the end: midnight UTC
    can fall in between) are set as ``box["days"]``."""
    root: Path = box["root"]
    (root / "code").write_text(str(code))
    (root / "sleep").write_text(str(sleep))
    before = yesterday()
    try:
        return _run_line(box, timeouts, seconds)
    finally:
        box["days"] = {before, yesterday()}


def _run_line(box: dict, timeouts: tuple[str, str] | None, seconds: float) -> subprocess.CompletedProcess:
    root: Path = box["root"]
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
    return subprocess.run([*env, "/bin/sh", "-c", command], capture_output=True, text=True, timeout=seconds)


def yesterday() -> str:
    return (datetime.now(timezone.utc) - timedelta(days=1)).strftime("%Y-%m-%d")


def mail(box: dict) -> str:
    path = box["root"] / "mail.out"
    return path.read_text() if path.exists() else ""


def mailed_day(box: dict) -> str:
    """The partition date in the mail's subject, checked to be one the line may have taken."""
    found = re.search(r"-s diffedit coco_recolor (\d{4}-\d{2}-\d{2}): exit", mail(box))
    assert found, mail(box)
    assert found.group(1) in box["days"], (found.group(1), box["days"])
    return found.group(1)


def test_the_line_is_a_valid_crontab_entry_with_overlap_protection_and_a_bound():
    line = crontab_line()
    assert line.split()[:5] == ["0", "2", "*", "*", "*"]
    command = cron_command(line)
    assert "flock -n" in command and "timeout " in command


@pytest.mark.parametrize("code", [1, 2, 3, 4])
def test_a_failed_run_mails_its_date_and_exit_code(box, code):
    """Before: `DS=$(...) cmd || echo "$DS"` mailed an empty date (the assignment is cmd's only)."""
    run_cron(box, code)
    day = mailed_day(box)
    calls = (box["root"] / "calls").read_text().splitlines()
    assert calls == [
        f"cwd={box['app']} args=run jobs/coco_recolor.yaml DS={day} "
        "DATA_BUCKET=my-data-bucket MODEL_BUCKET=my-model-bucket"
    ]
    sent = mail(box)
    assert f"args: -s diffedit coco_recolor {day}: exit {code} ops@example.com" in sent
    assert f"diffedit coco_recolor DS={day} failed: exit {code}" in sent
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
    assert f"{mailed_day(box)}: exit 75" in mail(box)


def test_a_run_past_its_bound_is_stopped_and_reported(box):
    start = time.monotonic()
    run_cron(box, 0, sleep=60, timeouts=("5s", "2s"))
    assert time.monotonic() - start < 30
    assert f"{mailed_day(box)}: exit 124" in mail(box)


def test_a_run_that_ignores_sigterm_is_killed_and_reported_with_exit_137(box):
    """timeout -k: SIGTERM at the bound; a run still there after the grace period gets SIGKILL, and the
    mail says exit 137."""
    (box["root"] / "ignore_term").touch()
    start = time.monotonic()
    run_cron(box, 0, sleep=20, timeouts=("1s", "1s"))
    assert time.monotonic() - start < 15  # not the stand-in's 20 s: it was killed
    assert f"{mailed_day(box)}: exit 137" in mail(box)
    assert f"diffedit coco_recolor DS={mailed_day(box)} failed: exit 137" in mail(box)


# --------------------------------------------------------------------------- the real CLI


@pytest.fixture
def real_box(box: dict, tmp_path: Path) -> dict:
    """``box`` with the real CLI (this checkout's .venv/bin/diffedit-batch, linked where the line runs
    it) and, as jobs/coco_recolor.yaml, a job on a tiny local model whose output is the line's
    partition, out/ds=${DS}."""
    from diffedit.tiny import save_tiny_model
    from pipeline.config import StorageConfig
    from pipeline.prepare import SHAPES_SCHEMA, shapes_rows, write_manifest

    real = Path(sys.executable).parent / "diffedit-batch"
    assert real.exists(), f"{real}: make install creates it"
    cli = box["app"] / ".venv" / "bin" / "diffedit-batch"
    cli.unlink()
    cli.symlink_to(real)
    app = box["app"]
    model = save_tiny_model(tmp_path / "model")
    write_manifest(shapes_rows(2, seed=0, size=32), str(app / "data" / "m"), StorageConfig(), SHAPES_SCHEMA)
    (app / "jobs").mkdir()
    (app / "jobs" / "coco_recolor.yaml").write_text(
        "presets: [compute/cpu]\ninput: {paths: [data/m]}\noutput: {path: 'out/ds=${DS}'}\n"
        f"model: {{source: '{model}'}}\nparams: {{num_inference_steps: 4, num_mask_draws: 2}}\n"
    )
    return box


def test_the_real_cli_under_crons_environment_reports_a_configuration_error(real_box):
    """The installed entry point runs with cron's environment alone (no venv activated, no PYTHONPATH):
    a job with an unknown key is exit 2, in the log and in the mail."""
    job = real_box["app"] / "jobs" / "coco_recolor.yaml"
    job.write_text(job.read_text() + "colour: red\n")
    run_cron(real_box, seconds=300)
    day = mailed_day(real_box)
    assert f"{day}: exit 2" in mail(real_box)
    log = (real_box["root"] / "log" / "coco_recolor.log").read_text()
    assert "error: config: jobs/coco_recolor.yaml: unknown key(s) ['colour']" in log, log[-3000:]
    assert not (real_box["app"] / "out").exists()


@pytest.mark.slow
def test_the_real_cli_under_crons_environment_edits_yesterdays_partition(real_box):
    """The whole line with the real CLI: a local Ray, the job, exit 0, no mail, the partition of
    yesterday complete."""
    result = run_cron(real_box, seconds=900)
    log = (real_box["root"] / "log" / "coco_recolor.log").read_text()
    assert result.returncode == 0, log[-4000:] + result.stderr
    assert mail(real_box) == "", mail(real_box)
    assert "succeeded: 2 ok, 0 failed" in log, log[-4000:]
    done = [
        d for d in real_box["days"] if (real_box["app"] / "out" / f".ds={d}.diffedit" / "_SUCCESS").exists()
    ]
    assert len(done) == 1, sorted(p.as_posix() for p in (real_box["app"] / "out").rglob("*"))
