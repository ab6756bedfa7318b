"""COCO instance detection and segmentation: ViTDet-style Mask R-CNN on the project's ViT, COCOeval evaluation."""
from .evaluator import COCOEvaluator, coco_eval, instances_to_results
from .model import SquarePadTransform, ViTDetBackbone, build_backbone, build_mask_rcnn, detection_loss
