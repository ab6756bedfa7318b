"""The shipped classification configs carry the official recipes (FINETUNE.md) and the paper's targets (Table 6)."""
from pathlib import Path

import pytest

from maetransfer.config import load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "cls"

# Official FINETUNE.md fine-tuning commands: blr, layer decay, drop path, epochs.
FINETUNE = {"vit_base": (5e-4, 0.65, 0.1, 100), "vit_large": (1e-3, 0.75, 0.2, 50), "vit_huge": (1e-3, 0.75, 0.3, 50)}
# MAE paper Table 6 top-1: ViT-B, ViT-L, ViT-H, ViT-H 448.
TABLE6 = {"inat2017": (70.5, 75.7, 79.3, 83.4), "inat2018": (75.4, 80.1, 83.0, 86.8),
          "inat2019": (80.5, 83.4, 85.7, 88.3), "places205": (63.9, 65.8, 65.9, 66.8),
          "places365": (57.9, 59.4, 59.8, 60.3)}
DATA = {"inat2017": ("inat", "train2017.json", "val2017.json", 5089),
        "inat2018": ("inat", "train2018.json", "val2018.json", 8142),
        "inat2019": ("inat", "train2019.json", "val2019.json", 1010),
        "places205": ("places", "trainvalsplit_places205/train_places205.csv",
                      "trainvalsplit_places205/val_places205.csv", 205),
        "places365": ("places", "places365_train_standard.txt", "places365_val.txt", 365)}
VARIANTS = [("vit_base", 0), ("vit_large", 1), ("vit_huge", 2), ("vit_huge_448", 3)]


def _effective_batch(cfg, gpus):
    return cfg.train.batch_size * cfg.train.accum_iter * gpus


@pytest.mark.parametrize("dataset", sorted(TABLE6))
@pytest.mark.parametrize("variant, column", VARIANTS)
def test_transfer_configs(dataset, variant, column):
    path = CONFIGS / f"{dataset}_{variant}.yaml"
    cfg = load_config(path)
    arch = variant.replace("_448", "")
    blr, layer_decay, drop_path, epochs = FINETUNE[arch]
    assert (cfg.model.arch, cfg.model.mode, cfg.model.global_pool) == (arch, "finetune", "avg")
    assert (cfg.train.blr, cfg.train.layer_decay, cfg.model.drop_path_rate, cfg.train.epochs) == (blr, layer_decay,
                                                                                              drop_path, epochs)
    assert cfg.model.img_size == (448 if variant.endswith("448") else 224)
    assert (cfg.data.format, cfg.data.train_split, cfg.data.val_split, cfg.data.num_classes) == DATA[dataset]
    assert (cfg.aug.auto_augment, cfg.aug.mixup, cfg.aug.cutmix, cfg.aug.smoothing, cfg.aug.reprob) == \
        ("rand-m9-mstd0.5-inc1", 0.8, 1.0, 0.1, 0.25)
    assert (cfg.train.warmup_epochs, cfg.train.min_lr, tuple(cfg.train.betas)) == (5, 1e-6, (0.9, 0.999))
    assert f"Target top-1 (paper Table 6): {TABLE6[dataset][column]}" in path.read_text()


@pytest.mark.parametrize("arch, epochs, gpus", [("vit_base", 90, 8), ("vit_large", 50, 8), ("vit_huge", 50, 16)])
def test_linear_probe_configs(arch, epochs, gpus):
    cfg = load_config(CONFIGS / f"imagenet_linprobe_{arch}.yaml")
    assert (cfg.model.mode, cfg.model.global_pool, cfg.train.optimizer) == ("linear", "token", "lars")
    assert (cfg.train.blr, cfg.train.weight_decay, cfg.train.epochs, cfg.train.warmup_epochs) == (0.1, 0, epochs, 10)
    assert _effective_batch(cfg, gpus) == 16384  # the batch the file's comment states for that many GPUs
    assert (cfg.aug.auto_augment, cfg.aug.mixup, cfg.aug.cutmix, cfg.aug.reprob) == ("", 0, 0, 0)


def test_imagenet_configs_and_demo():
    for arch in FINETUNE:
        cfg = load_config(CONFIGS / f"imagenet_{arch}.yaml")
        assert (cfg.data.format, cfg.data.num_classes) == ("imagefolder", 1000)
        assert _effective_batch(cfg, 8 if arch != "vit_huge" else 16) == 1024
    assert load_config(CONFIGS / "imagenet_partial_vit_large.yaml").model.partial_blocks == 1
    demo = load_config(CONFIGS / "demo.yaml")
    assert demo.data.demo and demo.train.init_checkpoint == "demo" and demo.model.arch == "vit_demo"
