from .pos_embed import interpolate_pos_embed, sincos_2d
from .vit import VIT_SIZES, Block, VisionTransformer, build_vit, vit_size
from .pyramid import ConvNorm, MultiLevelPyramid, SimpleFeaturePyramid, build_norm, vit_out_indices
