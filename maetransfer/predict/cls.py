"""A classifier on one's own images, with the evaluation's pipeline: the eval transform (`data.cls.build_transform`:
bicubic resize, centre crop, ImageNet normalisation), the model, softmax, top-k."""
import csv
import io
import json
from pathlib import Path
from typing import Dict, List, Optional

import torch
from omegaconf import DictConfig
from PIL import Image
from timm.data import ImageNetInfo

from ..checkpoint import unwrap_state
from ..cls.model import build_classifier
from ..cls.train import load_classifier
from ..cls.visualize import draw_topk
from ..data.cls import build_transform
from ..files import atomic_write, write_text
from .base import ImageLike, Predictor, to_image

RESULTS_FILE, TABLE_FILE = "predictions.json", "predictions.csv"
IMAGENET_CLASSES = 1000


class ClassificationPredictor(Predictor):
    """Returns per image `labels` and `scores`: the `topk` most probable classes (named by `class_names`) and their
    softmax probabilities, the most probable first."""

    task = "cls"
    summary_files = (RESULTS_FILE, TABLE_FILE)

    def __init__(self, cfg: DictConfig, model: torch.nn.Module, class_names, device: str = "auto",
                 amp: str = "none", meta: Optional[Dict] = None, topk: int = 5):
        super().__init__(cfg, model, class_names, device, amp, meta)
        self.topk = min(topk, len(self.class_names))
        self.transform = build_transform(cfg, is_train=False)

    @classmethod
    def load(cls, cfg: DictConfig, path: str, obj, meta: Dict, unsafe: bool):
        state, _ = unwrap_state(obj, path)
        names = meta.get("class_names")
        head = state.get("head.weight", state.get("head.1.weight"))  # fine-tuning / linear-probe head
        # The config's count when it sets one (load_classifier then names a checkpoint of another data set), else
        # the checkpoint's; without a head load_classifier says what the file holds instead.
        num_classes = cfg.data.num_classes or (len(names) if names else head.shape[0] if head is not None else 1)
        model = build_classifier(cfg.model, int(num_classes), int(cfg.model.img_size))
        load_classifier(model, path, unsafe)
        return model, int(num_classes)

    @classmethod
    def model_class_names(cls, cfg: DictConfig, num_classes: int) -> Optional[List[str]]:
        if num_classes != IMAGENET_CLASSES:
            return None
        info = ImageNetInfo()  # timm's ImageNet-1k synset descriptions, in the label order of every IN-1k model
        return [info.index_to_description(i) for i in range(IMAGENET_CLASSES)]

    @torch.no_grad()
    def logits(self, images: List[torch.Tensor]) -> torch.Tensor:
        """(N, K) logits of uint8 (3, H, W) images, through the evaluation's transform."""
        batch = torch.stack([self.transform(Image.fromarray(image.permute(1, 2, 0).numpy())) for image in images])
        with self.autocast():
            return self.model(batch.to(self.device)).float()

    def predict_tensors(self, images: List[torch.Tensor]) -> List[Dict[str, torch.Tensor]]:
        scores, labels = self.logits(images).softmax(dim=1).topk(self.topk, dim=1)
        return [{"labels": label.cpu(), "scores": score.cpu()} for label, score in zip(labels, scores)]

    def draw(self, image: ImageLike, prediction: Dict[str, torch.Tensor]):
        return draw_topk(to_image(image), prediction["labels"].tolist(), prediction["scores"].tolist(),
                         self.class_names)

    def save(self, out: Path, source: str, image: torch.Tensor, prediction: Dict[str, torch.Tensor],
             image_id: int) -> List[Dict]:
        picture = self.draw(image, prediction)
        atomic_write(out / self.files_of(source)[0], lambda tmp: picture.save(tmp, format="PNG"))
        topk = [{"label": label, "name": self.class_names[label], "probability": score}
                for label, score in zip(prediction["labels"].tolist(), prediction["scores"].tolist())]
        return [{"file_name": source, "topk": topk}]

    def save_summary(self, out: Path, records: List[Dict]) -> None:
        write_text(out / RESULTS_FILE, json.dumps(records, indent=1))
        table = io.StringIO()
        writer = csv.writer(table)
        writer.writerow(["file_name", "rank", "label", "name", "probability"])
        for record in records:
            for rank, entry in enumerate(record["topk"], 1):
                writer.writerow([record["file_name"], rank, entry["label"], entry["name"],
                                 f"{entry['probability']:.6f}"])
        write_text(out / TABLE_FILE, table.getvalue())
