"""COCO Mask R-CNN run: data (LSJ) + ViTDet-style detector on the shared engine, then COCOeval bbox/segm."""
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch.nn as nn
from omegaconf import DictConfig

from ..checkpoint import CheckpointError, load_encoder_state, load_into, read_raw
from ..data.coco import CocoDetection, LargeScaleJitter, collate_detection, write_demo_coco
from ..engine import Trainer, dist, evaluate_checkpoint, resolve_device
from ..optim import param_groups
from .evaluator import COCOEvaluator
from .model import build_mask_rcnn, detection_loss
from .visualize import save_predictions


def coco_split(data_cfg: DictConfig, split: str) -> Tuple[Path, Path]:
    """(image folder, annotation file) of a split in the COCO 2017 layout."""
    root = Path(data_cfg.root)
    return root / split, root / "annotations" / f"instances_{split}.json"


def build_datasets(cfg: DictConfig, eval_only: bool = False):
    d = cfg.data
    val_set = CocoDetection(*coco_split(d, d.val_split))
    if eval_only:
        return None, val_set
    lsj = LargeScaleJitter(int(cfg.model.img_size), tuple(d.scale_range), float(d.flip_prob))
    train_set = CocoDetection(*coco_split(d, d.train_split), transforms=lsj, filter_empty=bool(d.filter_empty))
    if train_set.category_ids != val_set.category_ids:
        raise ValueError(f"{train_set.ann_file} and {val_set.ann_file} list different categories")
    return train_set, val_set


def load_pretrained(model: nn.Module, path: str, unsafe: bool = False) -> None:
    """MAE encoder weights (any format the checkpoint reader knows) into the detector's ViT `backbone.net`: pos_embed
    is resized to the 1024 grid and a patch-14 kernel resampled to the model's patch (ViTDet runs ViT-H at 16); the
    encoder's cls token and final norm are unused by this backbone and reported as such."""
    load_into(model.backbone.net, load_encoder_state(path, unsafe), source=path)


def load_detector(model: nn.Module, path: str, unsafe: bool = False) -> None:
    """A trained detector: this tool's checkpoint.pth (or a file holding its 'model' state dict)."""
    ckpt, _ = read_raw(path, unsafe)
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not any(k.startswith("roi_heads.") for k in state):
        raise CheckpointError(f"{path}: not a Mask R-CNN checkpoint of this project (no roi_heads.* weights); an MAE "
                              "encoder file goes to train.init_checkpoint instead")
    target = model.state_dict()
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    wrong = [k for k in state if k in target and state[k].shape != target[k].shape]
    if missing or unexpected or wrong:
        raise CheckpointError(f"{path}: checkpoint does not match the configured detector ({len(missing)} missing "
                              f"{missing[:2]}, {len(unexpected)} unexpected {unexpected[:2]}, {len(wrong)} of another "
                              f"shape {wrong[:2]}); check model.* in the config")
    model.load_state_dict(state)


def run(cfg: DictConfig, eval_only: bool = False, checkpoint: Optional[str] = None) -> Dict:
    """Train and evaluate, or (eval_only) evaluate the detector in `checkpoint`; returns {'bbox': {...}, 'segm':
    {...}} on the main process, as written to <output_dir>/metrics.json."""
    output_dir = Path(cfg.train.output_dir)
    device = resolve_device(cfg.train.device)
    dist.init_distributed(device.type)
    if cfg.data.demo and dist.is_main_process():
        write_demo_coco(cfg.data.root, size=int(cfg.model.img_size))
    dist.barrier()
    train_set, val_set = build_datasets(cfg, eval_only)
    model = build_mask_rcnn(cfg.model, val_set.num_classes)
    if dist.get_world_size() > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # BN variants (Table 4) normalise across processes
    evaluator = COCOEvaluator(val_set, output_dir, mask_threshold=float(cfg.eval.mask_threshold),
                              batch_size=int(cfg.eval.batch_size), num_workers=int(cfg.train.num_workers),
                              amp=cfg.train.amp, max_images=int(cfg.eval.max_images))
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

    if cfg.train.init_checkpoint:
        from pretrain.demo import resolve_init_checkpoint  # 'demo' -> the demo-pretrained encoder
        load_pretrained(model, resolve_init_checkpoint(cfg.train.init_checkpoint), bool(cfg.train.unsafe_load))
    groups = param_groups(model, float(cfg.train.weight_decay), float(cfg.train.layer_decay),
                          num_layers=model.backbone.net.depth + 1)
    trainer = Trainer(cfg, model, groups, train_set, detection_loss, str(output_dir),
                      collate_fn=collate_detection, evaluate_fn=evaluate)
    trainer.fit()
    return final
