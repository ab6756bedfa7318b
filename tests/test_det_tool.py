"""tools/train_det.py end to end on a few generated images: train + evaluate writes the standard files, --eval-only
reproduces the numbers from the checkpoint, bad inputs end with one line naming the file."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from maetransfer.data.coco import write_demo_coco
from test_det_model import TINY

ROOT = Path(__file__).resolve().parent.parent


def _tool():
    spec = importlib.util.spec_from_file_location("train_det_tool", ROOT / "tools" / "train_det.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    assert {"loss_classifier", "loss_mask", "loss_objectness"} <= set(logged[0])
    results = json.loads((run / "coco_instances_results.json").read_text())
    assert all(r["category_id"] in {1, 3, 5, 7, 9, 11} for r in results)
    out = capsys.readouterr().out
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in out
    assert "Per-category segm AP" in out

    again = tool.main(_args(data, tmp_path / "eval", "--eval-only", "--checkpoint", str(run / "checkpoint.pth")))
    assert again == metrics  # the same weights from checkpoint.pth give the same detections
    assert json.loads((tmp_path / "eval" / "coco_instances_results.json").read_text()) == results


def test_tool_errors_are_one_line_naming_the_file(tmp_path, capsys):
    tool = _tool()
    data = tmp_path / "coco"
    (data / "annotations").mkdir(parents=True)
    (data / "annotations" / "instances_val2017.json").write_text("{not json")
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
