"""DiffEdit (Couairon et al., ICLR 2023, arXiv 2210.11427) on diffusers components. No Ray here."""

from diffedit.bundle import ModelBundle
from diffedit.params import EditParams

__all__ = ["EditParams", "ModelBundle"]
__version__ = "0.1.0"
from diffedit.loading import load_bundle as load_bundle
