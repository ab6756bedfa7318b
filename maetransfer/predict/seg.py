"""UperNet on one's own images, with the mIoU evaluation's pipeline: `seg.inference.predict` (resize to the config's
scale bound, whole or sliding-window inference, optional multi-scale and flip, logits back at the image's size)."""
import json
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image

from ..data.ade import read_image
from ..files import atomic_write, write_text
from ..seg.inference import predict
from ..seg.segmentor import build_segmentor
from ..seg.train import class_names, load_segmentor
from ..seg.visualize import class_colours, draw_segmentation
from .base import ImageLike, Predictor, to_image

RESULTS_FILE = "predictions.json"
LABELS_FOLDER = "labels"


class SegmentationPredictor(Predictor):
    """Returns per image `label_map`, the (H, W) int64 class indices (named by `class_names`; ADE20K models: 0 =
    wall, the reduced labels) at the image's size. Pictures blend the class colours in at `opacity`."""

    task = "seg"
    summary_files = (RESULTS_FILE,)
    read_image = staticmethod(read_image)  # OpenCV, as mmseg's LoadImageFromFile: the evaluation's pixels

    def __init__(self, cfg: DictConfig, model: torch.nn.Module, class_names, device: str = "auto",
                 amp: str = "none", meta: Optional[Dict] = None, opacity: float = 0.5):
        super().__init__(cfg, model, class_names, device, amp, meta)
        self.opacity = opacity
        palette = self.meta.get("palette")  # a data set's own colours, as its training run stored them
        self.colours = class_colours(self.class_names, palette if palette and len(palette) == len(class_names)
                                     else None)

    @classmethod
    def load(cls, cfg: DictConfig, path: str, obj, meta: Dict, unsafe: bool):
        model = build_segmentor(cfg.model)
        load_segmentor(model, path, unsafe)
        return model, int(cfg.model.num_classes)

    @classmethod
    def model_class_names(cls, cfg: DictConfig, num_classes: int) -> Optional[List[str]]:
        return class_names(cfg)  # data.class_names, ADE20K's when unset

    @torch.no_grad()
    def scores(self, image: torch.Tensor) -> torch.Tensor:
        """(K, H, W) class scores of a uint8 (3, H, W) image at its size, through the evaluation's inference."""
        d = self.cfg.data
        with self.autocast():
            return predict(self.model, image, self.cfg.eval, tuple(d.scale), tuple(d.mean), tuple(d.std),
                           self.device)

    def predict_tensors(self, images: List[torch.Tensor]) -> List[Dict[str, torch.Tensor]]:
        # one at a time at its own size, as evaluation runs
        return [{"label_map": self.scores(image).argmax(0).cpu()} for image in images]

    def draw(self, image: ImageLike, prediction: Dict[str, torch.Tensor]):
        return draw_segmentation(to_image(image, self.read_image), prediction["label_map"], self.class_names,
                                 self.colours, self.opacity)

    @classmethod
    def files_of(cls, source: str) -> List[str]:
        """The picture and the label map under labels/: a PNG of the class indices, 8-bit (16-bit for models of
        more than 256 classes)."""
        picture = super().files_of(source)[0]
        return [picture, str(Path(LABELS_FOLDER) / picture)]

    def save(self, out: Path, source: str, image: torch.Tensor, prediction: Dict[str, torch.Tensor],
             image_id: int) -> List[Dict]:
        picture_file, label_file = self.files_of(source)
        picture = self.draw(image, prediction)
        atomic_write(out / picture_file, lambda tmp: picture.save(tmp, format="PNG"))
        label = prediction["label_map"].numpy().astype(np.uint8 if len(self.class_names) <= 256 else np.uint16)
        atomic_write(out / label_file, lambda tmp: Image.fromarray(label).save(tmp, format="PNG"))
        values, counts = np.unique(label, return_counts=True)
        classes = [{"label": int(v), "name": self.class_names[v], "fraction": round(float(c) / label.size, 6)}
                   for v, c in sorted(zip(values, counts), key=lambda vc: -vc[1])]
        return [{"file_name": source, "label_map": label_file, "classes": classes}]

    def save_summary(self, out: Path, records: List[Dict]) -> None:
        write_text(out / RESULTS_FILE, json.dumps(records, indent=1))
