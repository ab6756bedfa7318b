"""tools/train_det.py end to end on a few generated images: train + evaluate writes the standard files, --eval-only
reproduces the numbers from the checkpoint, a detector exports to detectron2's layout (key names written out by hand
from detectron2's ViTDet modules) and back bit-exact, bad inputs end with one line naming the file."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from maetransfer.data.coco import write_demo_coco
from test_det_model import TINY
from tool_modules import load_tool

ROOT = Path(__file__).resolve().parent.parent


def _tool():
    return load_tool("train_det")


def _args(data, out, *extra):
    return ["--output-dir", str(out), f"data.root={data}", "data.demo=false", "train.init_checkpoint=",
            "train.max_iters=3", "train.batch_size=2", "train.num_workers=0", "train.checkpoint_period=3",
            "train.log_period=1", "model.rpn_post_nms_top_n_test=20", *TINY, *extra]


def test_train_then_eval_only_writes_standard_outputs(tmp_path, capsys):
    data = write_demo_coco(tmp_path / "coco", num_train=6, num_val=3, size=64, max_shapes=2)
    tool = _tool()
    metrics = tool.main(_args(data, tmp_path / "run"))
    run = tmp_path / "run"
    for name in ("metrics.json", "coco_instances_results.json", "config.yaml", "checkpoint.pth", "log.jsonl",
                 "predictions.png"):
        assert (run / name).is_file(), name
    saved = json.loads((run / "metrics.json").read_text())
    assert set(saved) == {"bbox", "segm"}
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100"} <= set(saved["bbox"])
    assert saved == json.loads(json.dumps(metrics))
    logged = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask"} <= set(logged[0])
    results = json.loads((run / "coco_instances_results.json").read_text())
    assert all(r["category_id"] in {1, 3, 5, 7, 9, 11} for r in results)
    out = capsys.readouterr().out
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in out
    assert "Per-category segm AP" in out
    lines = out.splitlines()  # the job's stages in order, then the final figures once
    assert lines.index(f"[1/2] training: 3 iterations of 2 images (1 epoch) into {run}") < lines.index(
        "[2/2] evaluation: the final model on the validation set")
    assert sum(line.startswith("bbox AP ") for line in lines) == 1
    assert sum(line.startswith("finished in ") for line in lines) == 1

    again = tool.main(_args(data, tmp_path / "eval", "--eval-only", "--checkpoint", str(run / "checkpoint.pth")))
    assert again == metrics  # the same weights from checkpoint.pth give the same detections
    assert f"[1/1] evaluation: {run / 'checkpoint.pth'} on the validation set" in capsys.readouterr().out
    assert json.loads((tmp_path / "eval" / "coco_instances_results.json").read_text()) == results


def test_tool_errors_are_one_line_naming_the_file(tmp_path, capsys):
    tool = _tool()
    data = tmp_path / "coco"
    for split in ("train2017", "val2017"):  # both there (checked before anything runs), the validation one malformed
        (data / split).mkdir(parents=True)
    (data / "annotations").mkdir()
    (data / "annotations" / "instances_val2017.json").write_text("{not json")
    (data / "annotations" / "instances_train2017.json").write_text("{}")
    with pytest.raises(SystemExit) as exit_info:
        tool.main(_args(data, tmp_path / "run"))
    assert exit_info.value.code == 1  # bad input: one line, exit 1 (usage errors are 2)
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "instances_val2017.json: not valid JSON" in err and "\n" not in err

    encoder = tmp_path / "encoder.pth"
    torch.save({"model": {"patch_embed.proj.weight": torch.zeros(32, 3, 8, 8)}}, encoder)
    good = write_demo_coco(tmp_path / "good", num_train=2, num_val=1, size=64, max_shapes=1)
    with pytest.raises(SystemExit):
        tool.main(_args(good, tmp_path / "run", "--eval-only", "--checkpoint", str(encoder)))
    err = capsys.readouterr().err.strip()
    assert "encoder.pth: not a Mask R-CNN checkpoint" in err and "\n" not in err


def detectron2_keys(depth=4, global_blocks=(1, 3)):
    """The tensors of detectron2's ViTDet Mask R-CNN (modeling/backbone/vit.py ViT + SimpleFeaturePyramid,
    StandardRPNHead with 2 convs, FastRCNNConvFCHead 4conv1fc with LN -- here TINY's 2 convs -- FastRCNNOutputLayers,
    MaskRCNNConvUpsampleHead), listed by hand for the TINY config: patch 8, scales (2, 1, 0.5) -> simfp_2..4."""
    keys = ["backbone.net.pos_embed", "backbone.net.patch_embed.proj.weight", "backbone.net.patch_embed.proj.bias"]
    for i in range(depth):
        for part in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            keys += [f"backbone.net.blocks.{i}.{part}.weight", f"backbone.net.blocks.{i}.{part}.bias"]
        keys += [f"backbone.net.blocks.{i}.attn.rel_pos_h", f"backbone.net.blocks.{i}.attn.rel_pos_w"]
    conv_ln = lambda name: [f"{name}.weight", f"{name}.norm.weight", f"{name}.norm.bias"]  # noqa: E731
    keys += ["backbone.simfp_2.0.weight", "backbone.simfp_2.0.bias"] + conv_ln("backbone.simfp_2.1")
    keys += conv_ln("backbone.simfp_2.2")
    for stage in (3, 4):  # identity and max-pool stages: two normed convs at indices 0/1 and 1/2
        first = 0 if stage == 3 else 1
        keys += conv_ln(f"backbone.simfp_{stage}.{first}") + conv_ln(f"backbone.simfp_{stage}.{first + 1}")
    for name in ("conv.conv0", "conv.conv1", "objectness_logits", "anchor_deltas"):
        keys += [f"proposal_generator.rpn_head.{name}.weight", f"proposal_generator.rpn_head.{name}.bias"]
    keys += conv_ln("roi_heads.box_head.conv1") + conv_ln("roi_heads.box_head.conv2")
    keys += ["roi_heads.box_head.fc1.weight", "roi_heads.box_head.fc1.bias"]
    for name in ("box_predictor.cls_score", "box_predictor.bbox_pred", "mask_head.deconv", "mask_head.predictor"):
        keys += [f"roi_heads.{name}.weight", f"roi_heads.{name}.bias"]
    keys += conv_ln("roi_heads.mask_head.mask_fcn1") + conv_ln("roi_heads.mask_head.mask_fcn2")
    return keys


def _convert(*argv):
    load_tool("convert_checkpoint").main([str(a) for a in argv])


def test_detector_exports_to_detectron2_layout_and_back_bit_exact(tmp_path):
    data = write_demo_coco(tmp_path / "coco", num_train=4, num_val=2, size=64, max_shapes=2)
    tool = _tool()
    metrics = tool.main(_args(data, tmp_path / "run", "train.max_iters=2", "train.checkpoint_period=2"))
    trained = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=False)["model"]

    _convert(tmp_path / "run" / "checkpoint.pth", "--output", tmp_path / "vitdet.pth", "--to", "detectron2")
    exported = torch.load(tmp_path / "vitdet.pth", weights_only=True)
    assert set(exported) == {"model"} and sorted(exported["model"]) == sorted(detectron2_keys())
    assert exported["model"]["roi_heads.box_predictor.cls_score.weight"].shape[0] == 7  # 6 classes + background
    assert all(torch.equal(exported["model"][k], trained[k]) for k in exported["model"])

    # the exported file evaluates through --eval-only to the same numbers, and exports again byte for byte
    again = tool.main(_args(data, tmp_path / "eval", "--eval-only", "--checkpoint", str(tmp_path / "vitdet.pth")))
    assert again == metrics
    _convert(tmp_path / "vitdet.pth", "--output", tmp_path / "vitdet2.pth", "--to", "detectron2")
    second = torch.load(tmp_path / "vitdet2.pth", weights_only=True)["model"]
    assert list(second) == list(exported["model"])
    assert all(torch.equal(second[k], exported["model"][k]) for k in second)

    # as train.init_checkpoint the whole detector loads, heads included (here for 6 classes again)
    from maetransfer.det.model import build_mask_rcnn
    from maetransfer.det.train import load_pretrained
    from test_det_model import tiny_cfg
    model = build_mask_rcnn(tiny_cfg(), num_classes=6)
    load_pretrained(model, str(tmp_path / "vitdet.pth"))
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())
    fewer = build_mask_rcnn(tiny_cfg(), num_classes=2)  # fine-tuning on other classes: predictors start fresh
    load_pretrained(fewer, str(tmp_path / "vitdet.pth"))
    assert torch.equal(fewer.state_dict()["roi_heads.mask_head.mask_fcn1.weight"],
                       trained["roi_heads.mask_head.mask_fcn1.weight"])


def test_detectron2_files_with_numpy_arrays_and_bad_detector_files(tmp_path, capsys):
    """A model-zoo style .pkl ({'model': {name: ndarray}}) evaluates; a file of another class count, a foreign key
    and the multi-level pyramid (no detectron2 equivalent) end with one line naming the problem."""
    import pickle

    data = write_demo_coco(tmp_path / "coco", num_train=2, num_val=2, size=64, max_shapes=2)
    from maetransfer.det.model import build_mask_rcnn
    from test_det_model import tiny_cfg
    torch.manual_seed(0)
    state = build_mask_rcnn(tiny_cfg(), num_classes=6).state_dict()
    pkl = tmp_path / "model_final.pkl"
    pkl.write_bytes(pickle.dumps({"model": {k: v.numpy() for k, v in state.items()}, "__author__": "zoo"}))
    tool = _tool()
    tool.main(_args(data, tmp_path / "pkl", "--eval-only", "--checkpoint", str(pkl)))
    assert (tmp_path / "pkl" / "metrics.json").is_file()
    capsys.readouterr()

    cases = [({k: v for k, v in state.items() if not k.startswith("roi_heads.box_predictor.")} |
              {"roi_heads.box_predictor.cls_score.weight": torch.zeros(81, 64), "roi_heads.box_predictor.cls_score.bias":
               torch.zeros(81), "roi_heads.box_predictor.bbox_pred.weight": torch.zeros(320, 64),
               "roi_heads.box_predictor.bbox_pred.bias": torch.zeros(320)}, "cls_score.weight has shape (81, 64)"),
             (dict(state, **{"roi_heads.extra.weight": torch.zeros(1)}), "1 unexpected ['roi_heads.extra.weight']"),
             ({"rpn.head.conv.0.0.weight": torch.zeros(1), "roi_heads.box_predictor.cls_score.weight": torch.zeros(1)},
              "a detector of maetransfer 0.1 (torchvision layout")]
    for i, (bad, message) in enumerate(cases):
        path = tmp_path / f"bad{i}.pth"
        torch.save({"model": bad}, path)
        with pytest.raises(SystemExit) as exit_info:
            tool.main(_args(data, tmp_path / f"bad{i}", "--eval-only", "--checkpoint", str(path)))
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 1 and message in err and "\n" not in err, err

    multilevel = build_mask_rcnn(tiny_cfg("model.pyramid=multilevel", "model.scale_factors=[4.0,2.0,1.0,0.5]",
                                          "model.anchor_sizes=[8,16,32,64,128]"), num_classes=6)
    torch.save({"model": multilevel.state_dict()}, tmp_path / "ml.pth")
    with pytest.raises(SystemExit) as exit_info:
        _convert(tmp_path / "ml.pth", "--output", tmp_path / "ml_d2.pth", "--to", "detectron2")
    assert "no detectron2 ViTDet equivalent" in str(exit_info.value) and not (tmp_path / "ml_d2.pth").exists()


def test_the_table4_config_with_batchnorm_trains_with_two_cpu_processes(tmp_path):
    """BN in the FPN and heads becomes SyncBatchNorm only on GPUs: a 2-process gloo run keeps per-process BatchNorm,
    says so once, and trains."""
    data = write_demo_coco(tmp_path / "coco", num_train=8, num_val=2, size=64, max_shapes=2)
    args = [arg if not arg.startswith("model.anchor_sizes=") else "model.anchor_sizes=[8,16,32,64,128]"  # 5 levels
            for arg in _args(data, tmp_path / "run", "train.max_iters=2", "train.warmup_iters=1")]
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29734",
                          "tools/train_det.py", "--config", "configs/det/mask_rcnn_vit_base_coco_mae_table4.yaml",
                          *args], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("SyncBatchNorm needs CUDA; this CPU run keeps per-process BatchNorm") == 1
    assert torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)["iter"] == 2


def test_anchor_sizes_that_do_not_fit_the_pyramid_are_one_line(tmp_path, capsys):
    data = write_demo_coco(tmp_path / "coco", num_train=2, num_val=1, size=64, max_shapes=1)
    with pytest.raises(SystemExit) as exit_info:
        _tool().main(_args(data, tmp_path / "run", "model.anchor_sizes=[8,16]"))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: model.anchor_sizes has 2 sizes but the pyramid has 4 levels (model.scale_factors [2.0, 1.0, 0.5] + "
        "the max-pool level): give one size per level")
    assert not (tmp_path / "run").exists()
