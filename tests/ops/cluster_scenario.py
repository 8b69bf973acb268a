"""A 2-node Ray cluster on this machine (1 CPU per node), loopback only, and the job run on it every way
an operator would: as a driver, through the Ray Jobs API, with plans that cannot fit, and with
resources held by someone else. Run by tests/ops/test_cluster.py as

    unshare -n python tests/ops/cluster_scenario.py WORKDIR      # a private network namespace

so that nothing the cluster starts can listen on a routable interface (Ray rewrites 127.0.0.1 to the
machine's address otherwise); without ``unshare`` (not root) every node binds 127.0.0.1 explicitly.
It writes WORKDIR/result.json: one entry per step (command, exit code, output tail, seconds).

The cluster is this script's own: its own temp dir, token and ports; it is stopped by signalling the
``ray start --block`` processes it started (by PID), which stop their children, and any process left
that names the cluster's temp dir is then killed by PID. Never ``ray stop``: it kills every Ray of the
user on the machine.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ROWS = 2
STEPS = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """``ray start --head`` and one ``ray start --address``, 1 CPU each, as blocking child processes."""

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        # Short (Ray's socket paths must fit in 107 bytes), and one per node: nodes sharing one machine
        # and one temp dir share runtime_resources/, where each node's agent deletes packages the other
        # is using (a Jobs API worker then dies with FileNotFoundError on its working dir).
        self.temp = Path(f"/tmp/rc{os.getpid()}")
        self.worker_temp = Path(f"/tmp/rc{os.getpid()}w")
        self.port, self.dashboard = free_port(), free_port()
        self.env = env
        self.log = work / "cluster.log"
        self.procs: list[subprocess.Popen] = []

    @property
    def gcs(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def jobs_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard}"

    def start(self) -> None:
        common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--object-store-memory=200000000", "--block"]
        head = [str(BIN / "ray"), "start", "--head", f"--port={self.port}", f"--temp-dir={self.temp}",
                "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard}",
                *common]  # fmt: skip
        worker = [
            str(BIN / "ray"),
            "start",
            f"--address={self.gcs}",
            f"--temp-dir={self.worker_temp}",
            *common,
        ]
        log = self.log.open("ab")
        self.procs.append(
            subprocess.Popen(head, env=self.env, stdout=log, stderr=log, start_new_session=True)
        )
        self.wait_nodes(1, 90)
        self.procs.append(
            subprocess.Popen(worker, env=self.env, stdout=log, stderr=log, start_new_session=True)
        )
        self.wait_nodes(2, 90)

    def wait_nodes(self, n: int, timeout: float) -> None:
        probe = (
            "import ray,sys; ray.init(address=sys.argv[1], log_to_driver=False);"
            "print(sum(1 for x in ray.nodes() if x['Alive']))"
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            out = subprocess.run([sys.executable, "-c", probe, self.gcs], env=self.env, capture_output=True,
                                 text=True, timeout=60)  # fmt: skip
            if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(n)]:
                return
            time.sleep(2)
        raise RuntimeError(f"the cluster did not reach {n} node(s) in {timeout:g} s; see {self.log}")

    def stop(self) -> list[int]:
        """Stop the processes started here; return the PIDs that had to be killed afterwards."""
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)  # `ray start --block` then stops its own children
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)  # its own session: only the processes it started
        time.sleep(1)
        left = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if str(self.temp).encode() in cmdline:  # a process of this cluster only (both temp dirs)
                left.append(int(pid))
                os.kill(int(pid), signal.SIGKILL)
        for temp in (self.temp, self.worker_temp):
            shutil.rmtree(temp, ignore_errors=True)
        return left


def run(
    results: dict, name: str, cmd: list[str], env: dict[str, str], cwd: Path, timeout: float = 600
) -> dict:
    start = time.time()
    try:
        p = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        code, out = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as exc:
        code, out = "timeout", f"{exc.stdout or ''}{exc.stderr or ''}"
    # the head (which cluster the CLI connected to) and the tail (its summary) of a long output
    kept = out if len(out) <= 9000 else out[:3000] + "\n[...]\n" + out[-6000:]
    step = {"cmd": cmd, "code": code, "seconds": round(time.time() - start, 1), "output": kept}
    results[name] = step
    print(f"{name}: exit {code} in {step['seconds']} s", flush=True)
    return step


def job_yaml(manifest: Path, out: Path, model: str, compute: str) -> str:
    return (
        f"name: cluster_demo\npresets: [models/shapes-v3, compute/cpu]\ninput: {{paths: [{manifest}]}}\n"
        f"output: {{path: {out}, rows_per_file: 1}}\nmodel: {{source: {model}}}\n"
        f"params: {{num_inference_steps: {STEPS}, num_mask_draws: 2}}\ncompute: {{{compute}}}\n"
        "failure: {max_failed_fraction: 0.0}\n"
    )


def main(work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    if os.environ.get("DIFFEDIT_NETNS") == "1":
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(16),  # this cluster's own token (never ~/.ray/auth_token)
        PATH=f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}",
        PYTHONPATH=str(REPO),
        OMP_WAIT_POLICY="PASSIVE",
        RAY_DATA_DISABLE_PROGRESS_BARS="1",
        RAY_USAGE_STATS_ENABLED="0",
    )
    results: dict = {"netns": os.environ.get("DIFFEDIT_NETNS") == "1"}
    cluster = Cluster(work, env)
    try:
        started = time.time()
        cluster.start()
        results["cluster_start_seconds"] = round(time.time() - started, 1)
        driver = {**env, "RAY_ADDRESS": cluster.gcs}
        cli = [sys.executable, "-m", "pipeline.cli"]
        run(results, "prepare", [*cli, "prepare", "shapes", "--out", str(work / "manifest"), "--rows", str(ROWS)],
            env, work)  # fmt: skip
        listeners = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True).stdout
        results["listen_addresses"] = sorted(
            {line.split()[3].rsplit(":", 1)[0] for line in listeners.splitlines()}
        )

        model = str(REPO / "models" / "shapes-v3")
        plans = {
            "two_actors": "actors: 2, cpus_per_actor: 1",
            "actor_of_1_5_cpus": "actors: 1, cpus_per_actor: 1.5",
        }
        for name, compute in plans.items():
            job = work / f"{name}.yaml"
            job.write_text(job_yaml(work / "manifest", work / f"out_{name}", model, compute))
            run(results, f"validate_{name}", [*cli, "validate", str(job)], driver, work, timeout=300)
            run(results, f"run_{name}", [*cli, "run", str(job)], driver, work, timeout=300)

        # A driver of the cluster: the demo job (one actor on one node, the reads on the other).
        demo = work / "demo.yaml"
        demo.write_text(
            job_yaml(work / "manifest", work / "out_driver", model, "actors: 1, cpus_per_actor: 1")
        )
        run(results, "validate_demo", [*cli, "validate", str(demo)], driver, work, timeout=300)
        run(results, "driver_run", [*cli, "run", str(demo)], driver, work)
        run(results, "driver_rerun", [*cli, "run", str(demo)], driver, work, timeout=300)

        # Resources that never come: another job holds both CPUs; the plan fits the cluster, but no
        # actor can start before compute.actor_startup_timeout_s.
        hog = subprocess.Popen(
            [sys.executable, "-c",
             "import ray, sys, time\n"
             "ray.init(address=sys.argv[1], log_to_driver=False)\n"
             "@ray.remote(num_cpus=1)\nclass Hog:\n    def ping(self): return 1\n"
             "hogs = [Hog.remote() for _ in range(2)]; ray.get([h.ping.remote() for h in hogs])\n"
             "print('holding', flush=True); time.sleep(600)\n", cluster.gcs],
            env=env, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert hog.stdout is not None and hog.stdout.readline().strip() == "holding"
            stuck = work / "stuck.yaml"
            limits = "actors: 1, cpus_per_actor: 1, actor_startup_timeout_s: 20"
            stuck.write_text(job_yaml(work / "manifest", work / "out_stuck", model, limits))
            run(results, "stuck_run", [*cli, "run", str(stuck)], driver, work, timeout=300)
        finally:
            hog.terminate()  # its driver exits: Ray kills its actors
            hog.wait(30)

        # The Ray Jobs API: the repository as the working dir (what Ray uploads: files git does not
        # ignore), the manifest outside it (data/ is gitignored: never uploaded), the output absolute
        # (a relative one would land in the ephemeral _ray_pkg_<hash> dir), the model relative (in the
        # uploaded package).
        wd = work / "wd"
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                               text=True, check=True).stdout.split()  # fmt: skip
        for rel in files:  # a checkout's files, symbolic links kept as links
            source, target = REPO / rel, wd / rel
            if source.is_symlink() or source.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_symlink():
                os.symlink(os.readlink(source), target)
            elif source.is_file():
                shutil.copy2(source, target)
        (wd / "jobs" / "cluster_demo.yaml").write_text(
            job_yaml(
                work / "manifest", work / "out_jobs_api", "models/shapes-v3", "actors: 1, cpus_per_actor: 1"
            )
        )
        submit_env = {**env, "RAY_ADDRESS": cluster.jobs_url}
        submit = [str(BIN / "ray"), "job", "submit", "--working-dir", ".", "--",
                  "python", "-m", "pipeline.cli", "run", "jobs/cluster_demo.yaml"]  # fmt: skip
        run(results, "jobs_api_submit", submit, submit_env, wd)
        with (wd / "README.md").open("a") as f:  # any change gives the package another hash (and dir)
            f.write("\nchanged after the first submission\n")
        run(results, "jobs_api_resubmit", submit, submit_env, wd, timeout=300)
        for name in ("out_driver", "out_jobs_api"):
            out = work / name
            results[f"{name}_files"] = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
            state = out.parent / f".{out.name}.diffedit"  # the run's state, beside the output folder
            results[f"{name}_state_files"] = sorted(str(p.relative_to(state)) for p in state.rglob("*"))
    finally:
        results["killed_after_stop"] = cluster.stop()
        (work / "result.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
