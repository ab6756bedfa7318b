"""mmsegmentation plugin: our MAE ViT backbone and multi-level pyramid in mmseg's MODELS registry.

mmsegmentation is not a dependency. Where it is installed, a config can use these modules with
    custom_imports = dict(imports=['maetransfer.integrations.mmseg'], allow_failed_imports=False)
    model = dict(backbone=dict(type='MAETransferViT', arch='vit_base', img_size=512, out_indices=[3, 5, 7, 11],
                               pretrained='mae_pretrain_vit_base.pth'),
                 neck=dict(type='MAETransferPyramid', in_channels=768), ...)
`pretrained` takes any checkpoint format maetransfer.checkpoint reads (official MAE, HF, timm, detectron2, mmseg),
loaded with its readable report and pos-embed interpolation. Without mmseg importing this module registers nothing.
"""
from typing import Optional, Sequence

from ..checkpoint import load_encoder_state, load_into
from ..models import MultiLevelPyramid, vit_out_indices
from ..seg.segmentor import mae_backbone
from ..zoo import resolve

try:
    from mmengine.model import BaseModule
    from mmseg.registry import MODELS
except ImportError:  # mmseg absent: nothing to register
    MODELS = None

AVAILABLE = MODELS is not None

if AVAILABLE:
    @MODELS.register_module(force=True)
    class MAETransferViT(BaseModule):
        """mmseg backbone: the ViT of maetransfer.seg (cls token, rel-pos bias, layer scale, no final norm);
        returns the outputs of `out_indices` blocks as NCHW maps."""

        def __init__(self, arch: str = "vit_base", img_size: int = 512, out_indices: Optional[Sequence[int]] = None,
                     drop_path_rate: float = 0.1, rel_pos: Optional[str] = "bias",
                     layer_scale_init: Optional[float] = 1.0, pretrained: Optional[str] = None, init_cfg=None,
                     **sizes):
            super().__init__(init_cfg=init_cfg)
            self.vit = mae_backbone(arch, img_size, drop_path_rate, rel_pos, layer_scale_init, **sizes)
            self.out_indices = list(out_indices) if out_indices else vit_out_indices(self.vit.depth)
            self.pretrained = pretrained

        def init_weights(self):
            if self.pretrained:
                load_into(self.vit, load_encoder_state(resolve(self.pretrained)), source=self.pretrained)

        def forward(self, x):
            return tuple(self.vit.forward_maps(x, self.out_indices))

    @MODELS.register_module(force=True)
    class MAETransferPyramid(MultiLevelPyramid, BaseModule):
        """mmseg neck: Feature2Pyramid (rescales 4, 2, 1, 0.5; same parameter names)."""

        def forward(self, inputs):
            return tuple(super().forward(list(inputs)))
