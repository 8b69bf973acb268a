"""The resource plan check (pipeline.plan) as a pure function over cluster descriptions, the watchdog's
stall rule, and `validate` agreeing with `run` on this machine (issue 9, item 4)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pipeline_testing import REPO, cli

from pipeline.config import ComputeConfig, ConfigError, build_job
from pipeline.plan import GIB, ClusterDescription, Node, check_plan, local_cluster, require_plan
from pipeline.watchdog import stall_reason

TWO_SMALL_NODES = ClusterDescription(
    nodes=(Node(1, 0, 16 * GIB, "a"), Node(1, 0, 16 * GIB, "b")), where="the Ray cluster at test"
)


def compute(**kw) -> ComputeConfig:
    return ComputeConfig(**kw)


def test_two_actors_of_one_cpu_on_two_one_cpu_nodes_leave_no_cpu_for_the_reads():
    check = check_plan(compute(actors=2, cpus_per_actor=1), TWO_SMALL_NODES)
    assert not check.ok and check.actors_placed == 2
    assert len(check.problems) == 1 and "44687" in check.problems[0]
    assert "no node of the Ray cluster at test" in check.problems[0]
    assert check.warnings == ()


def test_an_actor_larger_than_every_node_is_refused_even_when_the_cpu_total_suffices():
    # 1.5 CPU < 2 CPUs in total, but Ray never splits an actor across nodes.
    check = check_plan(compute(actors=1, cpus_per_actor=1.5), TWO_SMALL_NODES)
    assert not check.ok and check.actors_placed == 0
    assert "one model actor needs 1.5 CPU" in check.problems[0]
    assert "largest: 1 CPU, 0 GPU, 16.0 GiB" in check.problems[0]


def test_fractional_actors_pack_onto_one_node_and_keep_a_whole_cpu_for_the_reads():
    check = check_plan(compute(actors=2, cpus_per_actor=0.5), TWO_SMALL_NODES)
    assert check.ok and check.actors_placed == 2 and check.warnings == ()
    # Three of them cannot keep a whole CPU free anywhere.
    assert not check_plan(compute(actors=3, cpus_per_actor=0.5), TWO_SMALL_NODES).ok


def test_one_actor_of_one_cpu_on_two_nodes_is_fine():
    assert check_plan(compute(actors=1, cpus_per_actor=1), TWO_SMALL_NODES).ok


@pytest.mark.parametrize(
    ("cpus", "actors", "ok"), [(2, 1, True), (2, 2, False), (4, 3, True), (4, 4, False), (1, 1, False)]
)
def test_a_single_machine_needs_one_cpu_besides_the_actors(cpus, actors, ok):
    machine = ClusterDescription(nodes=(Node(cpus, 0, 8 * GIB),), where="this machine")
    assert check_plan(compute(actors=actors, cpus_per_actor=1), machine).ok is ok


def test_io_cpus_above_one_are_what_the_reads_need():
    machine = ClusterDescription(nodes=(Node(4, 0, 8 * GIB),), where="this machine")
    assert check_plan(compute(actors=2, cpus_per_actor=1, io_cpus=2), machine).ok
    assert not check_plan(compute(actors=2, cpus_per_actor=1, io_cpus=2.5), machine).ok


def test_gpu_and_memory_must_fit_on_one_node():
    cpu_only = ClusterDescription(nodes=(Node(16, 0, 64 * GIB),), where="c")
    gpu_job = compute(device="cuda", dtype="float16", actors=1, cpus_per_actor=2, gpus_per_actor=1)
    problem = check_plan(gpu_job, cpu_only).problems[0]
    assert "needs 2 CPU, 1 GPU" in problem and "largest: 16 CPU, 0 GPU" in problem
    gpus = ClusterDescription(nodes=(Node(16, 1, 64 * GIB), Node(16, 1, 64 * GIB)), where="g")
    assert check_plan(gpu_job, gpus).ok
    two_gpus_each = dataclasses.replace(gpu_job, actors=3)  # 3 actors, 2 GPUs
    check = check_plan(two_gpus_each, gpus)
    assert not check.ok and "only 2 fit" in check.problems[0]
    big = compute(actors=1, cpus_per_actor=1, actor_memory_gb=100)
    assert "100 GiB" in check_plan(big, gpus).problems[0]
    assert check_plan(compute(actors=1, cpus_per_actor=1, actor_memory_gb=32), gpus).ok


def test_an_autoscaling_range_needs_its_minimum_and_warns_about_its_maximum():
    gpus = ClusterDescription(nodes=(Node(16, 1, 64 * GIB), Node(16, 1, 64 * GIB)), where="g")
    ranged = compute(device="cuda", dtype="float16", actors=(1, 8), cpus_per_actor=2, gpus_per_actor=1)
    check = check_plan(ranged, gpus)
    assert check.ok and check.actors_placed == 2
    assert check.warnings == ("compute: actors: at most 2 of 8 model actors fit on g now",)


def test_only_an_autoscaler_turns_problems_into_warnings():
    scaling = dataclasses.replace(TWO_SMALL_NODES, autoscaler=True, autoscaler_source="yes (test)")
    for job in (compute(actors=2, cpus_per_actor=1), compute(actors=1, cpus_per_actor=1.5)):
        check = check_plan(job, scaling)
        assert check.ok, check.problems
        assert len(check.warnings) == 1 and "the autoscaler may add nodes" in check.warnings[0]
        assert not check_plan(job, TWO_SMALL_NODES).ok  # the same plan without one


def test_an_autoscaler_whose_node_types_cannot_hold_an_actor_does_not_help():
    scaling = dataclasses.replace(
        TWO_SMALL_NODES, autoscaler=True, node_types=(Node(4, 0, 16 * GIB, "cpu-group"),)
    )
    gpu_job = compute(device="cuda", dtype="float16", actors=1, cpus_per_actor=2, gpus_per_actor=1)
    check = check_plan(gpu_job, scaling)
    assert not check.ok and "autoscaler node types: 4 CPU, 0 GPU" in check.problems[0]
    assert check_plan(compute(actors=1, cpus_per_actor=3), scaling).ok  # a 4-CPU node would hold it


def test_require_plan_names_the_job_file_in_one_line():
    job = build_job(
        {"input": {"paths": ["x"]}, "output": {"path": "y"}, "model": {"source": "m"},
         "compute": {"actors": 2, "cpus_per_actor": 1}},
        source="jobs/x.yaml",
    )  # fmt: skip
    with pytest.raises(ConfigError) as info:
        require_plan(job, TWO_SMALL_NODES)
    assert str(info.value).startswith("jobs/x.yaml: compute: ") and "\n" not in str(info.value)


def test_the_local_description_follows_this_machine(monkeypatch):
    """One node with the CPUs this process may use, whatever that count is (before, this compared
    os.cpu_count() with itself; the count is now the process's CPU affinity, issue 20 item 13)."""
    for cpus in (3, 64):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, cpus=cpus: set(range(cpus)))
        machine = local_cluster()
        assert len(machine.nodes) == 1 and machine.nodes[0].cpus == cpus
        assert machine.autoscaler is False and machine.nodes[0].memory > 0


@pytest.mark.slow
def test_the_local_description_is_the_ray_that_run_starts(tmp_path):
    """What the plan check assumes (``local_cluster``) against what ``run`` then gets: the local Ray
    ``ensure_ray`` starts, asked for its resources, in a fresh process (this one has a Ray already)."""
    code = (
        "import json, ray\n"
        "from pipeline.job import ensure_ray\n"
        "from pipeline.plan import local_cluster\n"
        "described = local_cluster().nodes\n"
        "assert ensure_ray(None) is True\n"
        "nodes = [n for n in ray.nodes() if n['Alive']]\n"
        "print(json.dumps({'described': [n.cpus for n in described],"
        " 'started': [n['Resources'].get('CPU') for n in nodes]}))\n"
        "ray.shutdown()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["described"] == seen["started"] and len(seen["started"]) == 1, seen


# --------------------------------------------------------------------------- the watchdog's rule


def test_stall_rule():
    c = compute(actor_startup_timeout_s=60, progress_timeout_s=30)
    kw = {"started": 100.0, "rows": 0}
    assert stall_reason(c, now=159, ready=0, last_change=None, **kw) is None
    assert "no model actor became ready within" in stall_reason(c, now=161, ready=0, last_change=None, **kw)
    # Once an actor is ready, the progress clock runs from the last change of the counts.
    assert stall_reason(c, now=400, ready=1, last_change=380, **kw) is None
    reason = stall_reason(c, now=411, ready=1, last_change=380, started=100.0, rows=7)
    assert (
        "no row finished the model stage for compute.progress_timeout_s = 30 s" in reason
        and "7 row" in reason
    )
    never = compute(actor_startup_timeout_s=0, progress_timeout_s=0)
    assert stall_reason(never, now=1e9, ready=0, last_change=None, **kw) is None
    assert stall_reason(never, now=1e9, ready=1, last_change=0, **kw) is None


# --------------------------------------------------------------------------- validate == run


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The command line in a fresh process (no Ray running in it), as a user runs it."""
    return cli(*args, cwd=cwd, env={"RAY_ADDRESS": None})


def test_validate_and_run_refuse_the_same_plan_on_this_machine(tmp_path, tiny_model):
    """Before: `validate` said `valid` to `actors: 2` on a 2-core machine, which `run` refused. The
    job's actors take every CPU of this machine, whatever it has: no CPU is left for the reads."""
    prepared = _cli("prepare", "shapes", "--out", "manifest", "--rows", "2", cwd=tmp_path)
    assert prepared.returncode == 0, prepared.stderr
    job = tmp_path / "job.yaml"
    job.write_text(
        f"input: {{paths: [manifest]}}\noutput: {{path: out}}\nmodel: {{source: {tiny_model}}}\n"
        f"compute: {{actors: {os.cpu_count()}, cpus_per_actor: 1}}\n"
    )
    checked = _cli("validate", "job.yaml", cwd=tmp_path)
    ran = _cli("run", "job.yaml", cwd=tmp_path)
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert ran.returncode == 2, ran.stdout + ran.stderr
    line = [ln for ln in checked.stderr.splitlines() if ln.startswith("error:")]
    assert len(line) == 1 and line == [ln for ln in ran.stderr.splitlines() if ln.startswith("error:")]
    assert "44687" in line[0] and f"this machine (a local Ray) (1 x {os.cpu_count()} CPU" in line[0]
    assert "Started a local Ray instance" not in ran.stderr  # refused before starting Ray
    assert not (tmp_path / "out").exists()  # and before touching the output
