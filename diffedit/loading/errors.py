"""The errors of model loading, one type per cause, so that callers (the job's exit codes) can tell a
broken model from an absent one and from unreachable storage."""

from __future__ import annotations

__all__ = ["ModelLayoutError", "ModelNotFoundError", "ModelSourceError", "UnsafeWeightsError"]


class ModelLayoutError(ValueError):
    """``where`` is not a loadable diffusers Stable Diffusion directory; ``problems`` names each gap."""

    def __init__(self, where: str, problems: list[str]) -> None:
        self.where = where
        self.problems = list(problems)
        super().__init__(f"{where}: not a loadable Stable Diffusion directory: " + "; ".join(self.problems))


class UnsafeWeightsError(ValueError):
    """A component has only pickle checkpoints, which are refused: unpickling can run arbitrary code."""


class ModelSourceError(OSError):
    """The source cannot be read: remote listing or download failed, hub unreachable or erroring (a rerun
    may succeed); ``ModelNotFoundError``, a subclass, when the model is not there at all."""


class ModelNotFoundError(ModelSourceError):
    """The model is not where the source says and a rerun would not find it: no such local directory, a hub
    repository or revision that does not exist, or a hub id with ``HF_HUB_OFFLINE=1`` and no snapshot of it
    in the hub cache. (An unreachable hub while online is a plain ``ModelSourceError``: it may come back.)"""
