"""DiffEdit (Couairon et al., ICLR 2023, arXiv 2210.11427) on diffusers components. No Ray here.

from diffedit import DiffEditor, EditRequest, load_bundle
editor = DiffEditor(load_bundle("models/shapes-v3"))
result = editor.edit([EditRequest(image, query="a red circle", caption="a blue circle", seed=0)])[0]
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffedit.bundle import ModelBundle
    from diffedit.editor import DiffEditor, EditRequest, EditResult
    from diffedit.flow_bundle import FlowBundle
    from diffedit.loading import load_bundle
    from diffedit.params import EditParams

__all__ = [
    "DiffEditor",
    "EditParams",
    "EditRequest",
    "EditResult",
    "FlowBundle",
    "ModelBundle",
    "load_bundle",
]
__version__ = "0.1.0"

#: Where each public name lives. They are imported on first use (PEP 562), so that importing a
#: torch-free module (``diffedit.params``, layout checks and weight hashing in ``diffedit.loading``)
#: does not import torch: the batch job's ``validate`` and no-op ``run`` never load a model.
_LAZY = {
    "DiffEditor": "diffedit.editor",
    "EditRequest": "diffedit.editor",
    "EditResult": "diffedit.editor",
    "ModelBundle": "diffedit.bundle",
    "FlowBundle": "diffedit.flow_bundle",
    "load_bundle": "diffedit.loading",
    "EditParams": "diffedit.params",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'diffedit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
