"""COCO Mask R-CNN run: data (LSJ) + the ViTDet detector on the shared engine, then COCOeval bbox/segm."""
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch.nn as nn
from omegaconf import DictConfig
from timm.layers import LayerNorm2d

from ..checkpoint import (CheckpointError, detector_state, is_detector, load_detector_into, load_into, parse_state,
                          read_raw, read_state, unwrap_state)
from ..data.coco import (CocoDetection, CocoFormatError, LargeScaleJitter, ResizeShortestEdge, collate_detection,
                         write_demo_coco)
from ..data.images import ROOT_HINT, MissingFileError
from ..engine import Task, run_task
from ..optim import NoDecayRule, param_groups
from .evaluator import COCOEvaluator
from .model import build_mask_rcnn, detection_loss


def coco_split(data_cfg: DictConfig, which: str) -> Tuple[Path, Path]:
    """(image folder, annotation file) of the 'train' or 'val' split: `data.<which>_images` / `data.<which>_json`
    where set (relative to data.root, absolute paths as they are; detectron2's register_coco_instances takes any
    json and image root alike), else the COCO 2017 layout under data.root: {split}/ and
    annotations/instances_{split}.json with split = data.<which>_split. A missing json is one line naming the key
    that chose it (the image folder is checked by CocoDetection, once the json is known to be readable)."""
    root, split = Path(data_cfg.root), str(data_cfg[f"{which}_split"])
    ann_file = root / str(data_cfg[f"{which}_json"] or f"annotations/instances_{split}.json")
    image_dir = root / str(data_cfg[f"{which}_images"] or split)
    if not ann_file.is_file():  # name the key that chose the path: the user's own, or data.root for the COCO layout
        hint = f"data.{which}_json" if data_cfg[f"{which}_json"] else f"{ROOT_HINT}, or data.{which}_json= to yours"
        raise MissingFileError(f"{ann_file}: annotation file not found ({hint})")
    return image_dir, ann_file


def build_datasets(cfg: DictConfig, eval_only: bool = False):
    d, size = cfg.data, int(cfg.model.img_size)
    # every validation annotation needs a mask: COCOeval's segm reads them all
    val_set = CocoDetection(*coco_split(d, "val"), transforms=ResizeShortestEdge(size, size), every_mask=True)
    if eval_only:
        return None, val_set
    lsj = LargeScaleJitter(size, tuple(d.scale_range), float(d.flip_prob))
    train_set = CocoDetection(*coco_split(d, "train"), transforms=lsj, filter_empty=bool(d.filter_empty))
    if train_set.category_ids != val_set.category_ids:
        raise CocoFormatError(f"{train_set.ann_file} and {val_set.ann_file} list different categories")
    return train_set, val_set


def load_pretrained(model: nn.Module, path: str, unsafe: bool = False) -> None:
    """`train.init_checkpoint`: a whole detector (this tool's checkpoint, a detectron2 ViTDet .pth/.pkl) loads with
    all its heads (predictors of another class count start fresh); an MAE encoder (any format the checkpoint reader
    knows) goes into the ViT `backbone.net`, its pos_embed resized to the pretraining grid and a patch-14 kernel
    resampled to the model's patch (ViTDet runs ViT-H at 16), the unused cls token / final norm reported."""
    obj, hf_config = read_raw(path, unsafe)
    state, _ = unwrap_state(obj, path)
    if is_detector(state):
        load_detector_into(model, detector_state(state), path, new_classes_ok=True)
    else:
        load_into(model.backbone.net, parse_state(obj, path, hf_config))


def load_detector(model: nn.Module, path: str, unsafe: bool = False) -> None:
    """--eval-only: a trained detector (this tool's checkpoint.pth, a detectron2 ViTDet .pth/.pkl, or a file written
    by `convert_checkpoint.py --to detectron2`) that matches the configured model exactly."""
    state, _ = read_state(path, unsafe)
    if not is_detector(state):
        raise CheckpointError(f"{path}: not a Mask R-CNN checkpoint (no roi_heads.* weights); an MAE encoder file "
                              "goes to train.init_checkpoint instead")
    load_detector_into(model, detector_state(state), path)


# The normalisation layers detectron2's get_default_optimizer_params(weight_decay_norm=0) recognises (solver/build.py)
_TORCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.InstanceNorm1d,
                nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.LocalResponseNorm)


def vitdet_no_decay(model: nn.Module) -> NoDecayRule:
    """The weight-decay rule of detectron2's ViTDet recipe for `model` (its optimizer: weight_decay_norm=0, overrides
    {"pos_embed": wd 0}): no decay on the parameters of torch's own normalisation layers (the ViT's LayerNorms, BN/GN
    variants) and on pos_embed. Everything else is decayed, as there: biases, the rel-pos tables, and the
    channels-first LayerNorms of the pyramid and heads, which detectron2 implements as a module of its own
    (layers.LayerNorm) that its list of norm types misses (timm's LayerNorm2d here, a subclass of nn.LayerNorm, hence
    named apart)."""
    exempt = {f"{module_name}.{name}" if module_name else name
              for module_name, module in model.named_modules() for name, _ in module.named_parameters(recurse=False)
              if name == "pos_embed" or (isinstance(module, _TORCH_NORMS) and not isinstance(module, LayerNorm2d))}
    return lambda name, _: name in exempt


class DetectionTask(Task):
    """COCO-layout data with LSJ, the ViTDet Mask R-CNN, COCOeval bbox/segm; results {'bbox': {...}, 'segm': {...}}
    on the main process, as written to <output_dir>/metrics.json."""

    name = "det"
    input_errors = (CocoFormatError,)

    # BN variants (Table 4) normalise across processes, as detectron2's SyncBN
    sync_batchnorm = "BN in model.pyramid_norm / fpn_norm / head_norm"

    @classmethod
    def check_data(cls, cfg: DictConfig, eval_only: bool) -> None:
        if not cfg.data.demo:
            for which in ("val",) if eval_only else ("val", "train"):  # in the order the run reads them
                images, _ = coco_split(cfg.data, which)
                if not images.is_dir():
                    raise MissingFileError(f"{images}: image folder not found (data.{which}_images)")

    def prepare_data(self) -> None:
        if self.cfg.data.demo:
            write_demo_coco(self.cfg.data.root, size=int(self.cfg.model.img_size))

    def build(self, eval_only: bool) -> nn.Module:
        cfg = self.cfg
        self.train_set, self.val_set = build_datasets(cfg, eval_only)
        return build_mask_rcnn(cfg, self.val_set.num_classes)

    load_trained = staticmethod(load_detector)
    load_pretrained = staticmethod(load_pretrained)

    def param_groups(self, model: nn.Module) -> List[Dict]:
        return param_groups(model, float(self.cfg.train.weight_decay), float(self.cfg.train.layer_decay),
                            num_layers=model.backbone.net.depth + 1, no_decay=vitdet_no_decay(model))

    def loss_fn(self):
        return detection_loss

    def build_evaluator(self) -> COCOEvaluator:
        return COCOEvaluator(self.val_set, Path(self.cfg.train.output_dir), batch_size=int(self.cfg.eval.batch_size))

    def scalars(self, results: Dict) -> Dict[str, float]:
        # the 12 COCO numbers of each iou type; the per-category APs stay in metrics.json
        return {k: v for k, v in super().scalars(results).items() if "/AP-" not in k}

    def trainer_options(self) -> Dict:
        # the category names and ids travel with the checkpoint, for tools/predict.py
        return {"collate_fn": collate_detection,
                "checkpoint_meta": {"class_names": self.val_set.category_names,
                                    "category_ids": self.val_set.category_ids}}


def run(cfg: DictConfig, eval_only: bool = False, checkpoint: Optional[str] = None,
        init_checkpoint: Optional[str] = None) -> Dict:
    """Train and evaluate, or (eval_only) evaluate the detector in `checkpoint` (`engine.run_task`)."""
    return run_task(DetectionTask(cfg), eval_only, checkpoint, init_checkpoint)
