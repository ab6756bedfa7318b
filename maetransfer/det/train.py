"""COCO Mask R-CNN run: data (LSJ) + the ViTDet detector on the shared engine, then COCOeval bbox/segm."""
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch.nn as nn
from omegaconf import DictConfig

from ..checkpoint import (CheckpointError, detector_state, is_detector, load_detector_into, load_into, parse_state,
                          read_raw, read_state, unwrap_state)
from ..data.coco import (CocoDetection, CocoFormatError, LargeScaleJitter, ResizeShortestEdge, collate_detection,
                         write_demo_coco)
from ..engine import Trainer, dist, evaluate_checkpoint, setup_process
from ..optim import param_groups
from .evaluator import COCOEvaluator
from .model import build_mask_rcnn, detection_loss
from .visualize import save_predictions


def coco_split(data_cfg: DictConfig, split: str) -> Tuple[Path, Path]:
    """(image folder, annotation file) of a split in the COCO 2017 layout."""
    root = Path(data_cfg.root)
    return root / split, root / "annotations" / f"instances_{split}.json"


def build_datasets(cfg: DictConfig, eval_only: bool = False):
    d, size = cfg.data, int(cfg.model.img_size)
    val_set = CocoDetection(*coco_split(d, d.val_split), transforms=ResizeShortestEdge(size, size))
    if eval_only:
        return None, val_set
    lsj = LargeScaleJitter(size, tuple(d.scale_range), float(d.flip_prob))
    train_set = CocoDetection(*coco_split(d, d.train_split), transforms=lsj, filter_empty=bool(d.filter_empty))
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


def run(cfg: DictConfig, eval_only: bool = False, checkpoint: Optional[str] = None,
        init_checkpoint: Optional[str] = None) -> Dict:
    """Train and evaluate, or (eval_only) evaluate the detector in `checkpoint`; returns {'bbox': {...}, 'segm':
    {...}} on the main process, as written to <output_dir>/metrics.json.
    init_checkpoint: the file that train.init_checkpoint names, as the tool resolved it (released names, hub ids
    and the demo encoder become files; the config keeps the name); by default train.init_checkpoint itself."""
    output_dir = Path(cfg.train.output_dir)
    device = setup_process(cfg.train)
    if cfg.data.demo and dist.is_main_process():
        write_demo_coco(cfg.data.root, size=int(cfg.model.img_size))
    dist.barrier()
    train_set, val_set = build_datasets(cfg, eval_only)
    model = build_mask_rcnn(cfg.model, val_set.num_classes, float(cfg.eval.mask_threshold))
    # BN variants (Table 4) normalise across processes, as detectron2's SyncBN
    model = dist.sync_batchnorm(model, device, "BN in model.pyramid_norm / fpn_norm / head_norm")
    evaluator = COCOEvaluator(val_set, output_dir, batch_size=int(cfg.eval.batch_size),
                              num_workers=int(cfg.train.num_workers), amp=cfg.eval.amp,
                              max_images=int(cfg.eval.max_images))
    final: Dict = {}

    def evaluate(m: nn.Module) -> Dict:
        final.clear()
        gathered = dist.all_gather_object(evaluator.predict(m))
        if not dist.is_main_process():
            return {}
        final.update(evaluator.evaluate_results([r for part in gathered for r in part]))
        save_predictions(m, val_set, output_dir / "predictions.png")
        return {f"{t}/{k}": v for t, metrics in final.items() for k, v in metrics.items()
                if v is not None and not k.startswith("AP-")}

    if eval_only:
        evaluate_checkpoint(model, load_detector, checkpoint, cfg, device, evaluate)
        return final

    init = init_checkpoint or cfg.train.init_checkpoint
    if init:
        load_pretrained(model, init, bool(cfg.train.unsafe_load))
    groups = param_groups(model, float(cfg.train.weight_decay), float(cfg.train.layer_decay),
                          num_layers=model.backbone.net.depth + 1)
    trainer = Trainer(cfg, model, groups, train_set, detection_loss, str(output_dir),
                      collate_fn=collate_detection, evaluate_fn=evaluate)
    trainer.fit()
    return final
