"""COCO instance detection and segmentation: ViTDet Mask R-CNN with detectron2's semantics on the project's ViT,
COCOeval evaluation."""
from .evaluator import COCOEvaluator, coco_eval, instances_to_results
from .model import MaskRCNN, MultiLevelBackbone, ViTDetBackbone, build_backbone, build_mask_rcnn, detection_loss
