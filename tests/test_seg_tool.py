"""tools/train_seg.py end to end on a tiny generated ADE20K-layout set: train, evaluate, re-evaluate a checkpoint
(ours and the same weights in mmseg naming)."""
import json
from pathlib import Path

import pytest
import torch

from maetransfer.checkpoint import read_checkpoint, to_mmseg
from maetransfer.data.ade import write_demo_ade20k
from tool_modules import load_tool

ROOT = Path(__file__).resolve().parent.parent
train_seg = load_tool("train_seg")

TINY = ["model.arch=vit_micro", "model.patch_size=8", "model.img_size=64", "model.channels=16",
        "model.aux_channels=8", "data.demo=false", "data.scale=[256,64]",
        "data.crop_size=[64,64]", "eval.crop_size=[64,64]", "eval.stride=[43,43]", "eval.num_vis=2",
        "train.max_iters=2", "train.batch_size=2", "train.warmup_iters=1", "train.init_checkpoint=",
        "train.num_workers=0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seg")
    data = write_demo_ade20k(tmp / "ADEChallengeData2016", 8, 3, 64)  # data.demo writes only the demo's own folder
    out = tmp / "run"
    metrics = train_seg.main(["--output-dir", str(out), f"data.root={data}", *TINY])
    return data, out, metrics


def test_train_writes_metrics_pngs_config(trained):
    _, out, metrics = trained
    saved = json.loads((out / "metrics.json").read_text())
    assert set(saved) >= {"mIoU", "mAcc", "aAcc", "per_class"} and len(saved["per_class"]) == 6
    assert saved["mIoU"] == metrics["mIoU"]
    assert len(list((out / "vis").glob("*.png"))) == 2
    assert (out / "config.yaml").is_file() and (out / "checkpoint.pth").is_file() and (out / "log.jsonl").is_file()


def test_eval_only_from_our_and_mmseg_checkpoints(trained, tmp_path):
    data, out, metrics = trained
    again = train_seg.main(["--eval-only", "--checkpoint", str(out / "checkpoint.pth"), "--output-dir",
                            str(tmp_path / "ours"), f"data.root={data}", *TINY])
    assert again["mIoU"] == metrics["mIoU"] and again["aAcc"] == metrics["aAcc"]
    # the same weights in mmseg's layout: backbone.layers.* (beit2mmseg names), neck.*, decode_head.*
    ckpt = read_checkpoint(out / "checkpoint.pth")
    state = to_mmseg(ckpt)["state_dict"]
    state.update({k: v for k, v in ckpt.other.items() if k.startswith(("decode_head.", "auxiliary_head."))})
    state.update({k: v for k, v in ckpt.other.items() if k.startswith("neck.")})
    torch.save({"state_dict": state, "meta": {"CLASSES": ["a"]}}, tmp_path / "mmseg.pth")
    mm = train_seg.main(["--eval-only", "--checkpoint", str(tmp_path / "mmseg.pth"), "--output-dir",
                         str(tmp_path / "mm"), f"data.root={data}", *TINY])
    assert mm["mIoU"] == metrics["mIoU"]


def test_eval_only_rejects_an_encoder_file(trained, tmp_path, capsys):
    data, out, _ = trained
    ckpt = read_checkpoint(out / "checkpoint.pth")
    torch.save({"model": ckpt.encoder}, tmp_path / "encoder.pth")
    with pytest.raises(SystemExit):
        train_seg.main(["--eval-only", "--checkpoint", str(tmp_path / "encoder.pth"), f"data.root={data}", *TINY])
    err = capsys.readouterr().err
    assert "encoder.pth: not a segmentor of this config" in err and len(err.strip().splitlines()) == 1


def test_class_names_of_another_count_end_the_tool_with_one_line(trained, tmp_path, capsys):
    data, _, _ = trained
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        train_seg.main(["--output-dir", str(tmp_path / "run"), f"data.root={data}", *TINY, "data.class_names=[a,b]"])
    assert exit_info.value.code == 2  # found when the command line is parsed
    assert capsys.readouterr().err == "error: data.class_names has 2 names but model.num_classes is 6\n"
    assert not (tmp_path / "run").exists()
