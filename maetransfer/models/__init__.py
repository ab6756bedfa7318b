from .pos_embed import interpolate_pos_embed, sincos_2d
from ..sizes import VIT_SIZES, vit_size
from .vit import Block, VisionTransformer, build_vit
from .pyramid import ConvNorm, MultiLevelPyramid, SimpleFeaturePyramid, build_norm, vit_out_indices
