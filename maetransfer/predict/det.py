"""Mask R-CNN on one's own images, with the COCO evaluation's pipeline: ResizeShortestEdge to the test size, the
detector, its predictions mapped back to each image's size (boxes scaled and clipped, masks pasted), and the same
conversion to COCO result dicts (`det.evaluator.instances_to_results`)."""
import json
from pathlib import Path
from typing import Dict, List, Optional

import torch
from omegaconf import DictConfig

from ..checkpoint import CheckpointError, detector_state, is_detector, load_detector_into, unwrap_state
from ..data.coco import COCO_CATEGORIES, ResizeShortestEdge
from ..det.evaluator import instances_to_results
from ..det.model import build_mask_rcnn
from ..det.visualize import draw_detections
from ..files import atomic_write, write_text
from .base import ImageLike, Predictor, to_image

RESULTS_FILE = "predictions.json"


class DetectionPredictor(Predictor):
    """Returns per image `boxes` (N, 4) xyxy, `scores`, `labels` (0..K-1, named by `class_names`) and bool `masks`
    (N, H, W) at the image's size, for the detections scoring at least `score_thresh` (the detector itself keeps
    those above model.box_score_thresh, 0.05 in every recipe, as COCO evaluation does). `category_ids[label]` is the
    label's id in the training data's annotation file (COCO's for COCO models)."""

    task = "det"
    summary_files = (RESULTS_FILE,)

    def __init__(self, cfg: DictConfig, model: torch.nn.Module, class_names, device: str = "auto",
                 amp: str = "none", meta: Optional[Dict] = None, score_thresh: float = 0.5):
        super().__init__(cfg, model, class_names, device, amp, meta)
        self.score_thresh = score_thresh
        self.resize = ResizeShortestEdge(int(cfg.model.img_size), int(cfg.model.img_size))
        if self.meta.get("category_ids"):
            self.category_ids = list(self.meta["category_ids"])
        elif len(self.class_names) == len(COCO_CATEGORIES):
            self.category_ids = [i for i, _ in COCO_CATEGORIES]
        else:
            self.category_ids = list(range(1, len(self.class_names) + 1))  # COCO numbers its categories from 1

    @classmethod
    def load(cls, cfg: DictConfig, path: str, obj, meta: Dict, unsafe: bool):
        # The checkpoint is read once, here, rather than again by det.train.load_detector.
        state, _ = unwrap_state(obj, path)
        if not is_detector(state):
            raise CheckpointError(f"{path}: not a Mask R-CNN checkpoint (no roi_heads.* weights), so not for a "
                                  "detection config")
        state = detector_state(state)
        scores = state.get("roi_heads.box_predictor.cls_score.weight")
        num_classes = scores.shape[0] - 1 if scores is not None else len(COCO_CATEGORIES)  # background last
        model = build_mask_rcnn(cfg, num_classes)
        load_detector_into(model, state, path)
        return model, num_classes

    @classmethod
    def model_class_names(cls, cfg: DictConfig, num_classes: int) -> Optional[List[str]]:
        return [name for _, name in COCO_CATEGORIES] if num_classes == len(COCO_CATEGORIES) else None

    @torch.no_grad()
    def detect(self, images: List[torch.Tensor]) -> List[Dict[str, torch.Tensor]]:
        """Every detection the model keeps (its model.box_score_thresh, as COCO evaluation sees them) for uint8
        (3, H, W) images, at each image's size."""
        inputs = [self.resize(image, {})[0].to(self.device) for image in images]
        with self.autocast():
            return self.model(inputs, output_sizes=[tuple(image.shape[1:]) for image in images])

    def predict_tensors(self, images: List[torch.Tensor]) -> List[Dict[str, torch.Tensor]]:
        kept = []
        for out in self.detect(images):
            keep = out["scores"] >= self.score_thresh
            kept.append({k: v[keep].cpu() for k, v in out.items()})
        return kept

    def draw(self, image: ImageLike, prediction: Dict[str, torch.Tensor]):
        return draw_detections(to_image(image), prediction, self.class_names)

    def save(self, out: Path, source: str, image: torch.Tensor, prediction: Dict[str, torch.Tensor],
             image_id: int) -> List[Dict]:
        picture = self.draw(image, prediction)
        atomic_write(out / self.files_of(source)[0], lambda tmp: picture.save(tmp, format="PNG"))
        results = instances_to_results(prediction, image_id, self.category_ids)
        for result, label in zip(results, prediction["labels"].tolist()):
            result.update(file_name=source, category_name=self.class_names[label])
        return results

    def save_summary(self, out: Path, records: List[Dict]) -> None:
        write_text(out / RESULTS_FILE, json.dumps(records))
