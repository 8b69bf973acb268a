"""DiffEdit (Couairon et al., ICLR 2023, arXiv 2210.11427) on diffusers components. No Ray here.

from diffedit import DiffEditor, EditRequest, load_bundle
editor = DiffEditor(load_bundle("models/shapes-v2"))
result = editor.edit([EditRequest(image, query="a red circle", caption="a blue circle", seed=0)])[0]
"""

from diffedit.bundle import ModelBundle
from diffedit.editor import DiffEditor, EditRequest, EditResult
from diffedit.loading import load_bundle
from diffedit.params import EditParams

__all__ = ["DiffEditor", "EditParams", "EditRequest", "EditResult", "ModelBundle", "load_bundle"]
__version__ = "0.1.0"
