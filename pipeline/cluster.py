"""Which Ray cluster a job runs on: the address (``--address`` / ``$RAY_ADDRESS``), a local Ray started
for this driver when there is none, and the resource plan checked against that cluster.

``validate`` and ``run`` both use ``check_resources`` from here (``pipeline.validate`` no longer
reaches into ``pipeline.job``, which imports it: no import cycle).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from pipeline.config import ConfigError, JobConfig
from pipeline.plan import PlanCheck, available_cpus, connected_cluster, local_cluster, require_plan

#: The node address of a local Ray started by ``ensure_ray``.
LOOPBACK = "127.0.0.1"


def ray_address(address: str | None = None) -> str | None:
    """The cluster to drive: ``address``, else ``$RAY_ADDRESS``, else None (a local Ray). A driver needs
    the head's GCS address (``host:6379``); ``http://host:8265`` is the Jobs API / dashboard address
    that ``ray job submit`` uses, and is refused here (a configuration error, exit 2)."""
    address = (address or os.environ.get("RAY_ADDRESS") or "").strip() or None
    if address and address.startswith(("http://", "https://")):
        raise ConfigError(
            f"Ray address {address!r} is a Jobs API (dashboard) URL: a driver needs the head's GCS address "
            "(host:6379). Use `ray job submit` with that URL, or --address / RAY_ADDRESS=host:6379 to drive"
        )
    return address


def ensure_ray(address: str | None = None) -> bool:
    """Connect to ``address`` / ``$RAY_ADDRESS``, or start a local Ray sized to this machine (the
    cluster ``pipeline.plan.local_cluster`` describes). Returns True when a local Ray was started here."""
    import ray

    if ray.is_initialized():
        return False
    address = ray_address(address)
    if address:
        ray.init(address=address, log_to_driver=True)
        return False
    # A local Ray serves this driver alone: its nodes' address is the loopback one, so no part of it is
    # reached through (or advertised on) the machine's network interfaces.
    ray.init(
        num_cpus=available_cpus(), include_dashboard=False, log_to_driver=True, _node_ip_address=LOOPBACK
    )
    return True


def check_resources(
    job: JobConfig,
    address: str | None = None,
    *,
    connect: Callable[[str | None], Any] | None = ensure_ray,
    log_warnings: bool = True,
) -> PlanCheck:
    """The plan check of ``validate`` and ``run`` (``pipeline.plan``): against this machine when no
    Ray address is given and Ray is not running here (without starting Ray), else against the
    cluster (connecting to it first with ``connect``, unless None). A plan that can never run is a
    ``ConfigError`` (exit 2); warnings are logged (``log_warnings``)."""
    import ray

    address = ray_address(address)
    if address is None and not ray.is_initialized():
        return require_plan(job, local_cluster(), log_warnings=log_warnings)
    if connect is not None:
        connect(address)
    return require_plan(job, connected_cluster(), log_warnings=log_warnings)
