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


@pytest.fixture(scope="session")
def mmseg():
    """mmsegmentation as an oracle, skipped where it is not installed (`import_mmseg`)."""
    return import_mmseg()


def import_mmseg():
    """mmsegmentation, skipped where it is not installed. mmseg 1.2.2 imports `mmcv.ops` at start-up
    (for Mask2Former's point_sample and a few heads), which a source build of mmcv without compiled ops
    (MMCV_WITH_OPS=0, the only build that installs from the registry here) cannot import: such an mmcv gets a
    stand-in `mmcv.ops` whose names fail only when used. The UperNet, ViT and inference code under test use none."""
    import sys
    import types

    pytest.importorskip("mmseg")
    try:
        import mmcv.ops  # noqa: F401
    except ModuleNotFoundError as exc:
        if "mmcv._ext" not in str(exc):
            raise
        for name in [m for m in sys.modules if m.startswith("mmcv.ops")]:
            del sys.modules[name]
        sys.modules["mmcv.ops"] = stand_in = types.ModuleType("mmcv.ops")

        def compiled_op(name):
            if name.startswith("__"):
                raise AttributeError(name)

            def missing(*args, **kwargs):
                raise RuntimeError(f"mmcv.ops.{name} needs mmcv's compiled ops")
            return type(name, (), {"__init__": missing, "__call__": missing})

        stand_in.__getattr__ = compiled_op
    import mmseg

    return mmseg
