"""Semantic segmentation: UperNet on the MAE ViT (mmseg semantics), sliding-window / multi-scale inference, mIoU."""
from .heads import FCNHead, UPerHead
from .inference import inference, predict, slide_inference
from .metric import SegMetric, intersect_and_union
from .segmentor import EncoderDecoder, build_segmentor
