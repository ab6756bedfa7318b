"""The optional mmseg plugin (skipped where mmsegmentation is not installed, as here by default)."""
import pytest
import torch

pytest.importorskip("mmseg")


def test_registered_backbone_and_neck_build_and_run(mmseg):
    from mmseg.registry import MODELS

    import maetransfer.integrations.mmseg  # noqa: F401  (registers the modules)

    backbone = MODELS.build(dict(type="MAETransferViT", arch="vit_micro", img_size=64))
    neck = MODELS.build(dict(type="MAETransferPyramid", in_channels=64))
    feats = neck(backbone(torch.randn(1, 3, 64, 64)))
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 16), (8, 8), (4, 4), (2, 2)]
