"""The resource plan check: can the job's actor pool and its read tasks ever be scheduled?

``check_plan(compute, cluster)`` is a pure function over a ``ClusterDescription`` (the nodes' CPU, GPU
and memory, whether an autoscaler can add nodes, and which node shapes it could add). ``validate`` and
``run`` both call it, on the same description:

* no Ray address (``--address`` / ``$RAY_ADDRESS``): ``local_cluster()``, this machine as the local
  Ray that ``run`` would start (all its CPUs, its GPUs, ~70 % of its available memory), without
  starting Ray;
* an address: ``connected_cluster()``, the live nodes of that cluster (``ray.nodes()``) and its
  autoscaler (``detect_autoscaler``).

The rules (each broken one is a one-line problem; ``run`` and ``validate`` exit 2 on a problem):

1. one model actor (``cpus_per_actor``, ``gpus_per_actor``, ``actor_memory_gb``) fits on some node:
   Ray never splits an actor across nodes, so ``cpus_per_actor: 1.5`` on 1-CPU nodes waits for ever;
2. ``min_actors`` actors fit on the nodes together (the pool does not start with fewer);
3. with the pool at its size (``max_actors``, or as many as fit), some node keeps
   ``max(1, io_cpus)`` CPUs free: Ray Data's file listing reserves one whole CPU, and its read tasks
   ``io_cpus``, and with every CPU held by actors they are never scheduled and Ray Data waits for
   ever (Ray issue 44687).

Actors are placed one by one on the fullest node that still holds them (best fit: the placement
that best keeps a whole CPU free elsewhere): the check passes plans that some placement can run. It is necessary, not
sufficient (Ray's scheduler may place differently, a node may die): ``pipeline.watchdog`` bounds the
rest at run time.

When an autoscaler can add nodes, a plan that does not fit the nodes of now is a warning, not a
problem, unless the autoscaler's node shapes are known (from the cluster config that autoscaler v2
publishes) and none of them holds one actor.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

from pipeline.config import ComputeConfig, ConfigError, JobConfig

log = logging.getLogger("pipeline")

GIB = 1024**3

#: Overrides autoscaler detection: ``yes`` (nodes can be added), ``no`` (they cannot).
AUTOSCALER_ENV = "DIFFEDIT_AUTOSCALER"


@dataclass(frozen=True)
class Node:
    """One node's schedulable resources (Ray's ``CPU``, ``GPU`` and ``memory`` resources)."""

    cpus: float
    gpus: float = 0.0
    memory: float = 0.0  # bytes of Ray's "memory" resource (what actors may reserve)
    name: str = ""  # shown in messages (IP address, node type)

    def describe(self) -> str:
        return f"{self.cpus:g} CPU, {self.gpus:g} GPU, {self.memory / GIB:.1f} GiB"


@dataclass(frozen=True)
class ClusterDescription:
    """What a plan is checked against."""

    nodes: tuple[Node, ...]  # the live nodes now
    where: str  # "this machine (a local Ray)" or "the Ray cluster at ..."
    autoscaler: bool = False  # an autoscaler can add nodes
    autoscaler_source: str = "none found"  # how that was decided (shown in messages)
    node_types: tuple[Node, ...] = ()  # shapes the autoscaler can add; () = unknown (or none)


@dataclass(frozen=True)
class PlanCheck:
    """The outcome: ``problems`` mean the plan can never run; ``warnings`` that it may not yet."""

    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    actors_placed: int = 0  # how many actors fit on the nodes of now
    notes: tuple[str, ...] = ()  # what was checked, for validate's report

    @property
    def ok(self) -> bool:
        return not self.problems


def _fits(free: list[float], need: tuple[float, float, float]) -> bool:
    eps = 1e-9
    return all(f + eps >= n for f, n in zip(free, need, strict=True))


def _pack(
    nodes: tuple[Node, ...], need: tuple[float, float, float], count: int
) -> tuple[int, list[list[float]]]:
    """Place up to ``count`` actors needing ``need`` = (cpu, gpu, memory) on ``nodes``. Each actor
    goes to the fullest node that still holds it (best fit), which keeps whole CPUs free on other
    nodes for the read tasks. Returns (actors placed, free resources per node)."""
    free = [[n.cpus, n.gpus, n.memory] for n in nodes]
    placed = 0
    for _ in range(count):
        candidates = [i for i, f in enumerate(free) if _fits(f, need)]
        if not candidates:
            break
        best = min(candidates, key=lambda i: (free[i][0] - need[0], free[i][1] - need[1]))
        free[best] = [f - n for f, n in zip(free[best], need, strict=True)]
        placed += 1
    return placed, free


def check_plan(compute: ComputeConfig, cluster: ClusterDescription) -> PlanCheck:
    """Check ``compute`` against ``cluster`` (see the module docstring for the rules)."""
    need = (compute.cpus_per_actor, compute.gpus_per_actor, compute.actor_memory_gb * GIB)
    actor = f"{need[0]:g} CPU, {need[1]:g} GPU, {compute.actor_memory_gb:g} GiB"
    read_cpus = max(1.0, compute.io_cpus)
    where = cluster.where
    nodes = cluster.nodes
    shapes = "; ".join(_shape_counts(nodes)) or "no nodes"
    notes = [f"{where}: {len(nodes)} node(s) ({shapes}); autoscaler: {cluster.autoscaler_source}"]
    problems: list[str] = []
    warnings: list[str] = []

    def trouble(message: str, *, can_autoscale: bool) -> None:
        if cluster.autoscaler and can_autoscale:
            warnings.append(f"{message} (continuing: the autoscaler may add nodes)")
        else:
            problems.append(message)

    # An autoscaler whose node types are known can only help if one of them holds an actor.
    typed_fit = any(_fits([t.cpus, t.gpus, t.memory], need) for t in cluster.node_types)
    can_grow = not cluster.node_types or typed_fit

    if not any(_fits([n.cpus, n.gpus, n.memory], need) for n in nodes):
        largest = max(nodes, key=lambda n: (n.gpus, n.cpus, n.memory), default=None)
        message = (
            f"compute: one model actor needs {actor}, but no node of {where} ({shapes}) has that "
            f"(largest: {largest.describe() if largest else 'none'}"
            + (
                f"; autoscaler node types: {', '.join(t.describe() for t in cluster.node_types)}"
                if cluster.node_types
                else ""
            )
            + "): the actor would wait for ever. Lower compute.cpus_per_actor / gpus_per_actor / actor_memory_gb"
        )
        trouble(message, can_autoscale=can_grow)
        return PlanCheck(tuple(problems), tuple(warnings), 0, tuple(notes))

    placed, free = _pack(nodes, need, compute.max_actors)
    notes.append(
        f"plan: {compute.max_actors if compute.min_actors == compute.max_actors else f'{compute.min_actors}-{compute.max_actors}'}"
        f" actor(s) of {actor}; {placed} fit now; reads need {read_cpus:g} CPU on one node"
    )
    if placed < compute.min_actors:
        trouble(
            f"compute: actors: {compute.min_actors} model actor(s) of {actor} needed to start, but only {placed} fit "
            f"on {where} ({shapes}): the pool would wait for ever. Use fewer actors (compute.actors)",
            can_autoscale=can_grow,
        )
    elif placed < compute.max_actors:
        warnings.append(
            f"compute: actors: at most {placed} of {compute.max_actors} model actors fit on {where} now"
        )
    if placed >= compute.min_actors and not any(f[0] + 1e-9 >= read_cpus for f in free):
        held = placed * need[0]
        trouble(
            f"compute: {placed} model actor(s) x cpus_per_actor {need[0]:g} = {held:g} CPU leave no node of {where} "
            f"({shapes}) with the {read_cpus:g} CPU that the read tasks need: Ray Data would wait for ever "
            "(Ray issue 44687). Use fewer actors or a fractional cpus_per_actor",
            can_autoscale=True,
        )
    return PlanCheck(tuple(problems), tuple(warnings), placed, tuple(notes))


def _shape_counts(nodes: tuple[Node, ...]) -> list[str]:
    counts: dict[str, int] = {}
    for n in nodes:
        key = f"{n.cpus:g} CPU, {n.gpus:g} GPU"
        counts[key] = counts.get(key, 0) + 1
    return [f"{c} x {k}" for k, c in counts.items()]


# --------------------------------------------------------------------------- describing a cluster


def available_cpus() -> int:
    """The CPUs this process may run on: its CPU affinity (``taskset``, a container's cpuset), which
    ``os.cpu_count()`` ignores (it counts the machine's). A local Ray and torch threads are sized by it."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # pragma: no cover - no affinity on this platform (macOS)
        return os.cpu_count() or 1


def local_cluster() -> ClusterDescription:
    """This machine as the local Ray that ``run`` starts without an address (``ensure_ray``): all its
    CPUs, the GPUs Ray detects, and ~70 % of the available memory (Ray gives the object store 30 %).
    Starts no Ray."""
    cpus = float(available_cpus())
    gpus = 0.0
    memory = 0.0
    try:  # Ray's own detection (CUDA_VISIBLE_DEVICES, NVML), as ray.init does
        from ray._private.accelerators import get_accelerator_manager_for_resource

        gpus = float(get_accelerator_manager_for_resource("GPU").get_current_node_num_accelerators())
    except Exception:  # pragma: no cover - no accelerator support in this Ray
        log.debug("GPU detection failed", exc_info=True)
    try:
        from ray._private.utils import estimate_available_memory

        memory = 0.7 * float(estimate_available_memory())
    except Exception:  # pragma: no cover
        log.debug("memory estimate failed", exc_info=True)
    return ClusterDescription(
        nodes=(Node(cpus, gpus, memory, "this machine"),),
        where="this machine (a local Ray)",
        autoscaler=False,
        autoscaler_source="none (a local Ray)",
    )


def connected_cluster() -> ClusterDescription:
    """The cluster this process is a Ray driver of (``ray.init`` done): its live nodes'
    ``CPU``/``GPU``/``memory`` resources, and its autoscaler (``detect_autoscaler``)."""
    import ray

    nodes = tuple(
        Node(
            float(n["Resources"].get("CPU", 0)),
            float(n["Resources"].get("GPU", 0)),
            float(n["Resources"].get("memory", 0)),
            str(n.get("NodeManagerAddress", "")),
        )
        for n in ray.nodes()
        if n.get("Alive")
    )
    present, source, types = detect_autoscaler()
    address = ray.get_runtime_context().gcs_address
    return ClusterDescription(
        nodes=nodes,
        where=f"the Ray cluster at {address}",
        autoscaler=present,
        autoscaler_source=source,
        node_types=types,
    )


def detect_autoscaler() -> tuple[bool, str, tuple[Node, ...]]:
    """Whether the connected cluster has an autoscaler that can add nodes: (present, how it was
    decided, node shapes it can add if known). In order:

    1. ``$DIFFEDIT_AUTOSCALER`` = ``yes`` / ``no`` decides (for clusters where detection is wrong);
    2. the cluster config in the GCS (``ray._private.state.state.get_cluster_config()``, published by
       autoscaler v2 deployments such as KubeRay's): present when a node group can grow
       (``max_count`` -1 or above ``min_count``); its node groups are the shapes it can add;
    3. autoscaler v2's state in the GCS (``ray.autoscaler.v2.sdk.get_cluster_status``), when an
       autoscaler has reported one (``autoscaler_version`` > 0);
    4. autoscaler v1's status in the GCS key-value store (``__autoscaling_status``, written by the
       head's monitor).

    In 3 and 4, a cluster started by hand (``ray start``) runs the monitor with a read-only node
    provider that names every node type ``node_<node id>`` (Ray's ``format_readonly_node_type``) and
    can launch nothing: such a status means no autoscaler. Any other node type name means one.
    Without any status: no autoscaler."""
    override = os.environ.get(AUTOSCALER_ENV, "").strip().lower()
    if override in ("yes", "1", "true"):
        return True, f"yes (${AUTOSCALER_ENV})", ()
    if override in ("no", "0", "false"):
        return False, f"no (${AUTOSCALER_ENV})", ()
    import ray

    try:
        config = ray._private.state.state.get_cluster_config()
    except Exception:
        log.debug("no cluster config", exc_info=True)
        config = None
    if config is not None and config.node_group_configs:
        groups = list(config.node_group_configs)
        types = tuple(
            Node(
                float(g.resources.get("CPU", 0)),
                float(g.resources.get("GPU", 0)),
                float(g.resources.get("memory", 0)),
                g.name,
            )
            for g in groups
            if g.max_count != 0
        )
        grows = any(g.max_count == -1 or g.max_count > g.min_count for g in groups)
        names = ", ".join(f"{g.name} {g.min_count}..{g.max_count}" for g in groups)
        return grows, f"{'yes' if grows else 'no'} (cluster config node groups: {names})", types
    try:
        from ray.autoscaler.v2.sdk import get_cluster_status

        status = get_cluster_status(ray.get_runtime_context().gcs_address, timeout=10)
        if str(status.stats.autoscaler_version or "0") not in ("", "0"):
            listed = [*status.active_nodes, *status.idle_nodes, *status.pending_nodes]
            named = {n.ray_node_type_name for n in listed if n.ray_node_type_name != f"node_{n.node_id}"}
            if named:
                return True, f"yes (autoscaler v2, node types {sorted(named)})", ()
            return False, "no (autoscaler v2 with a read-only provider)", ()
    except Exception:
        log.debug("no autoscaler v2 status", exc_info=True)
    try:
        from ray.experimental.internal_kv import _internal_kv_get

        raw = _internal_kv_get("__autoscaling_status")
        report = (json.loads(raw) if raw else {}).get("autoscaler_report") or {}
        mapping: dict[str, Any] = report.get("node_type_mapping") or {}
        named = {v for k, v in mapping.items() if v != f"node_{k}"}
        if named:
            return True, f"yes (autoscaler v1, node types {sorted(named)})", ()
        if mapping:
            return False, "none (the monitor's read-only provider: nodes started by hand)", ()
    except Exception:
        log.debug("no autoscaler v1 status", exc_info=True)
    return False, "none found", ()


def require_plan(job: JobConfig, cluster: ClusterDescription, *, log_warnings: bool = True) -> PlanCheck:
    """``check_plan`` for ``job``; a problem is a ``ConfigError`` (one line naming the job file),
    warnings are logged (``log_warnings``)."""
    check = check_plan(job.compute, cluster)
    if check.problems:
        raise ConfigError(f"{job.source}: " + "; ".join(check.problems))
    for warning in check.warnings if log_warnings else ():
        log.warning("%s", warning)
    return check
