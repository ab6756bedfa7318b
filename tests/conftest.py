"""Fixtures shared by several test files."""

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory):
    """A flat folder of 16 random 40x40 PNGs: a tiny pretraining set (read only)."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(16):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder
