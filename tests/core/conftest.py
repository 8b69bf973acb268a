from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from diffedit.schedule import alphas_cumprod_from_config
from diffedit.tiny import SD_SCHEDULER_CONFIG, tiny_bundle


@pytest.fixture(scope="session")
def bundle():
    """One tiny random SD-layout model for the session (float32, CPU). Native size 32 px."""
    return tiny_bundle(seed=0)


@pytest.fixture(scope="session")
def alphas():
    return alphas_cumprod_from_config(SD_SCHEDULER_CONFIG)


@pytest.fixture(scope="session")
def random_image():
    """random_image(seed, width, height, mode="RGB") -> a PIL image of uniform noise."""

    def make(seed: int, width: int, height: int, mode: str = "RGB") -> Image.Image:
        rng = np.random.default_rng(seed)
        a = (rng.random((height, width, 3)) * 255).astype(np.uint8)
        return Image.fromarray(a, "RGB").convert(mode)

    return make
