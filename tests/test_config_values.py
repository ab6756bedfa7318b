"""Allowed values are checked when the command line is parsed: a word a key does not take, or a number out of its
range, ends the tool with one line naming the key, the value and what is allowed (exit 2), before anything is
written; every recipe under configs/ passes the same checks, and the lists agree with the code that uses them."""
from pathlib import Path

import pytest

from maetransfer.config import CHOICES, load_config
from tool_modules import load_tool

ROOT = Path(__file__).resolve().parent.parent


def test_every_recipe_passes_the_checks():
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        if path.parent.name != "report":  # report suites are no recipes
            load_config(path)


def test_the_lists_agree_with_the_code_that_reads_the_keys():
    from maetransfer.cls.model import MODES
    from maetransfer.data.cls import FORMATS
    from maetransfer.models import VIT_SIZES
    from maetransfer.optim import lr_at

    assert set(CHOICES["model.arch"]) == set(VIT_SIZES)
    assert set(CHOICES["model.mode"]) == set(MODES)
    assert set(CHOICES["data.format"]) == set(FORMATS)
    cfg = load_config(ROOT / "configs/train_defaults.yaml")
    for schedule in CHOICES["train.schedule"]:  # each word is a schedule the engine computes
        cfg.train.schedule = schedule
        assert lr_at(cfg.train, 5, 10, 10, 1.0) >= 0


def _main(tool):
    return load_tool(tool).main


BAD_VALUES = [
    ("train_cls", "train.amp=bf17", "train.amp=bf17 is not one of none, bf16, fp16 (did you mean bf16?)"),
    ("train_cls", "train.schedule=cosin",
     "train.schedule=cosin is not one of cosine, step, poly, constant (did you mean cosine?)"),
    ("train_cls", "train.optimizer=adamww", "train.optimizer=adamww is not one of adamw, sgd, lars (did you mean adamw?)"),
    ("train_cls", "train.device=gpu", "train.device=gpu is not one of auto, cpu, cuda"),
    ("train_cls", "eval.amp=fp32", "eval.amp=fp32 is not one of none, bf16, fp16"),
    ("train_cls", "model.arch=vit_bsae",
     "model.arch=vit_bsae is not one of vit_micro, vit_demo, vit_tiny, vit_small, vit_base, vit_large, vit_huge (did "
     "you mean vit_base?)"),
    ("train_cls", "model.mode=linprobe", "model.mode=linprobe is not one of finetune, linear, partial"),
    ("train_cls", "model.global_pool=mean", "model.global_pool=mean is not one of avg, token"),
    ("train_cls", "data.format=coco", "data.format=coco is not one of imagefolder, inat, places, csv"),
    ("train_det", "model.rel_pos=rope", "model.rel_pos=rope is not one of decomposed, bias, ''"),
    ("train_det", "model.pyramid=fpn", "model.pyramid=fpn is not one of simple, multilevel"),
    ("train_det", "model.pyramid_norm=IN", "model.pyramid_norm=IN is not one of LN, BN, SyncBN, GN, ''"),
    ("train_det", "model.head_norm=IN", "model.head_norm=IN is not one of LN, BN, SyncBN, GN, ''"),
    ("train_seg", "model.norm=GN", "model.norm=GN is not one of BN, SyncBN"),
    ("train_seg", "eval.mode=sliding", "eval.mode=sliding is not one of slide, whole"),
    ("pretrain_mae", "model.mask_sampler=rand",
     "model.mask_sampler=rand is not one of random, block, grid (did you mean random?)"),
    ("pretrain_mae", "model.mask_ratio=1.5", "model.mask_ratio=1.5 must be in (0, 1)"),
    ("pretrain_mae", "train.batch_size=0", "train.batch_size=0 must be at least 1"),
    ("train_det", "train.layer_decay=0", "train.layer_decay=0 must be in (0, 1]"),
    ("train_cls", "train.ema_decay=1", "train.ema_decay=1 must be in [0, 1)"),
    ("train_seg", "train.num_workers=-1", "train.num_workers=-1 must be at least 0"),
]


@pytest.mark.parametrize("tool, override, line", BAD_VALUES, ids=[o for _, o, _ in BAD_VALUES])
def test_a_value_a_key_does_not_take_is_one_line_before_anything_is_written(tool, override, line, tmp_path,
                                                                            capsys):
    earlier = tmp_path / "earlier.txt"
    earlier.write_text("a file of an earlier run")
    with pytest.raises(SystemExit) as exit_info:
        _main(tool)([override, "--output-dir", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"error: command line: {line}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["earlier.txt"]
    assert earlier.read_text() == "a file of an earlier run"


BROKEN_RULES = [
    ("train_det", ["model.global_blocks=[1,4]"],
     "model.global_blocks=[1, 4]: the encoder has blocks 0..3 (model.arch=vit_demo, depth 4)"),
    ("train_det", ["model.anchor_sizes=[8,16]"],
     "model.anchor_sizes has 2 sizes but the pyramid has 4 levels (model.scale_factors [2.0, 1.0, 0.5] + the "
     "max-pool level): give one size per level"),
    ("train_seg", ["model.out_indices=[0,1,2,4]"],
     "model.out_indices=[0, 1, 2, 4]: the encoder has blocks 0..3 (model.arch=vit_demo, depth 4)"),
    ("train_seg", ["data.class_names=[a,b]"], "data.class_names has 2 names but model.num_classes is 6"),
    ("train_cls", ["aug.mixup=0.8", "train.batch_size=31"],
     "train.batch_size=31: Mixup/CutMix mix pairs of images in a batch; use an even batch, or aug.mixup=0 "
     "aug.cutmix=0"),
    ("train_cls", ["model.img_size=60"],
     "model.img_size=60 is not a multiple of the patch size 8 (model.arch=vit_demo, model.patch_size)"),
    ("pretrain_mae", ["model.patch_size=6"],
     "model.img_size=64 is not a multiple of the patch size 6 (model.arch=vit_demo, model.patch_size)"),
]


@pytest.mark.parametrize("tool, overrides, line", BROKEN_RULES, ids=[" ".join(o) for _, o, _ in BROKEN_RULES])
def test_keys_that_do_not_fit_together_are_one_line_before_anything_is_written(tool, overrides, line, tmp_path,
                                                                              capsys):
    earlier = tmp_path / "earlier.txt"
    earlier.write_text("a file of an earlier run")
    with pytest.raises(SystemExit) as exit_info:
        _main(tool)([*overrides, "--output-dir", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"error: {line}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["earlier.txt"]
    assert earlier.read_text() == "a file of an earlier run"


@pytest.mark.parametrize("tool, config", [("pretrain_mae", "configs/pretrain/mae_vit_large.yaml"),
                                          ("train_det", "configs/det/mask_rcnn_vit_base_coco.yaml"),
                                          ("train_seg", "configs/seg/upernet_vit_base_ade20k.yaml"),
                                          ("train_cls", "configs/cls/inat2018_vit_base.yaml")])
def test_print_config_shows_the_resolved_config_and_writes_nothing(tool, config, tmp_path, capsys):
    from omegaconf import OmegaConf

    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        _main(tool)(["--config", config, "--print-config", "train.lr=3e-4", "--output-dir", str(out)])
    assert exit_info.value.code == 0
    printed = OmegaConf.create(capsys.readouterr().out)
    expected = load_config(config, ["train.lr=3e-4", f"train.output_dir={out}"])
    assert OmegaConf.to_container(printed) == OmegaConf.to_container(expected)
    assert not tmp_path.joinpath("run").exists()


def test_the_recipe_list_names_every_recipe_with_its_task_and_published_number(capsys):
    import yaml

    from maetransfer.configs import main

    main([])
    lines = capsys.readouterr().out.splitlines()[1:]
    listed = {line.split()[0]: line.split() for line in lines}
    shipped = {str(p.relative_to(ROOT)) for p in (ROOT / "configs").glob("*/*.yaml")
               if p.parent.name != "report" and p.name != "base.yaml"}
    assert set(listed) == shipped and len(lines) == len(shipped)
    for path, row in listed.items():
        assert row[1] == path.split("/")[1] and row[2] == load_config(path).model.arch
    published = yaml.safe_load((ROOT / "configs/report/paper_results.yaml").read_text())
    assert "bbox.AP 51.6 segm.AP 45.9" in " ".join(listed["configs/det/mask_rcnn_vit_base_coco.yaml"])
    assert f"top1 {published['configs/cls/inat2018_vit_base.yaml']['top1']}" in " ".join(
        listed["configs/cls/inat2018_vit_base.yaml"])
