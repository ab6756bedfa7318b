"""tools/export.py and maetransfer.export against independent references: the classifier's ONNX Runtime and
TorchScript logits equal a timm ViT loaded from the same official-layout file; an mmseg-layout UperNet and a
detectron2-layout ViTDet export and then predict and evaluate (tools/predict.py, --eval-only) what the PyTorch model
does on the demo's validation images; the two ops replaced for export equal the ones they stand for; and (where
detectron2 is installed) a file written by detectron2's own checkpointer exports and predicts what detectron2's
DefaultPredictor does. Bad input is checked as a user meets it: the exit code, one line, earlier files
byte-identical."""
import csv
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from maetransfer.config import load_config
from maetransfer.data.ade import write_demo_ade20k
from maetransfer.data.cls import write_demo_data
from maetransfer.data.coco import write_demo_coco
from maetransfer.export.check import match_detections
from tool_modules import load_tool

pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parent.parent
export_tool, predict_tool = load_tool("export"), load_tool("predict")


def _run(tool, *argv):
    return tool.main([str(a) for a in argv])


def _fails(capsys, tool, *argv) -> tuple:
    """(exit code, stderr lines) of a tool run that ends with an error."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        _run(tool, *argv)
    return exit_info.value.code, capsys.readouterr().err.strip().splitlines()


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- the two replacements made for export, against what they replace --------------------------------------------------
def test_traced_adaptive_pooling_equals_torchs():
    """ONNX has no adaptive pooling for bins that do not divide the input (the PPM's 3 and 6 bins on 16 x 16): the
    traced form (averaging matrices) gives F.adaptive_avg_pool2d's values, here and in the exported graph."""
    from maetransfer.seg.heads import AdaptiveAvgPool2d

    x = torch.randn(2, 5, 16, 11)
    for bins in (1, 2, 3, 6, (4, 7)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's note that the input size becomes a constant: it is one
            traced = torch.jit.trace(AdaptiveAvgPool2d(bins), x)
        assert "einsum" in str(traced.graph) and "adaptive" not in str(traced.graph)
        torch.testing.assert_close(traced(x), F.adaptive_avg_pool2d(x, bins), rtol=0, atol=1e-6)


def test_clipping_to_a_tensor_size_equals_torchvisions():
    """An exported detector takes its image size as an input: boxes clipped to a size held in tensors equal
    torchvision's clip_boxes_to_image with the same size in numbers."""
    from torchvision.ops import clip_boxes_to_image

    from maetransfer.det.boxes import clip_boxes

    boxes = torch.randn(50, 8) * 100 + 40
    for h, w in ((60, 90), (1, 1), (128, 77)):
        expected = clip_boxes_to_image(boxes.view(-1, 4), (h, w)).view(50, 8)
        assert torch.equal(clip_boxes(boxes, (torch.tensor(h), torch.tensor(w))), expected)


# -- classification: an official fine-tuned layout file ----------------------------------------------------------------
CLS_TINY = ["model.arch=vit_micro", "model.patch_size=8", "model.embed_dim=32", "model.depth=2", "model.num_heads=2",
            "model.img_size=32"]


@pytest.fixture(scope="module")
def cls_export(tmp_path_factory):
    """A timm ViT saved in the official fine-tuned layout ({'model': encoder + fc_norm + head}), the demo's
    classification data, and its ONNX and TorchScript exports."""
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    tmp = tmp_path_factory.mktemp("cls")
    torch.manual_seed(0)
    reference = TimmViT(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=6,
                        global_pool="avg", fc_norm=True).eval()
    torch.nn.init.normal_(reference.head.weight, std=0.5)  # spread-out logits, no near ties
    torch.save({"model": reference.state_dict()}, tmp / "finetuned.pth")
    data = write_demo_data(tmp / "data", n_train=2, n_val=12, size=32, seed=1)
    common = ["--config", ROOT / "configs/cls/demo.yaml", "--checkpoint", tmp / "finetuned.pth",
              f"data.root={data}", "data.demo=false", *CLS_TINY]
    onnx_meta = _run(export_tool, *common, "--output-dir", tmp / "onnx")
    script_meta = _run(export_tool, *common, "--output-dir", tmp / "torchscript", "--format", "torchscript")
    return reference, data, tmp, onnx_meta, script_meta


def test_classifier_logits_equal_timms_from_the_same_file(cls_export):
    from timm.data import create_transform

    from maetransfer.export.runtime import ExportedGraph

    reference, data, tmp, onnx_meta, script_meta = cls_export
    transform = create_transform(32, interpolation="bicubic", crop_pct=0.875)
    images = sorted((data / "images" / "val").rglob("*.png"))[:5]
    batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in images])
    with torch.no_grad():
        expected = reference(batch)
    for path in (tmp / "onnx" / "model.onnx", tmp / "torchscript" / "model.pt"):
        logits = ExportedGraph(path)(batch)[0]  # five images through a graph traced with two: the batch is dynamic
        torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)
    for meta in (onnx_meta, script_meta):
        assert meta["check"]["passed"] and meta["input_size"] == [32, 32] and meta["num_classes"] == 6
    written = json.loads((tmp / "onnx" / "export.json").read_text())
    assert written["task"] == "cls" and written["check"]["top1_equal"] == "1/1"
    assert written["mean"] == pytest.approx([0.485, 0.456, 0.406]) and written["config"]["model"]["img_size"] == 32


def test_predict_and_eval_only_on_the_exported_classifier_give_pytorchs_results(cls_export, tmp_path):
    reference, data, tmp, _, _ = cls_export
    train_cls = load_tool("train_cls")
    rows, metrics = {}, {}
    for name, checkpoint in (("pytorch", tmp / "finetuned.pth"), ("onnx", tmp / "onnx" / "model.onnx"),
                             ("torchscript", tmp / "torchscript" / "model.pt")):
        # predict.py takes a config file: the resolved one the export wrote
        _run(predict_tool, "--config", tmp / "onnx" / "config.yaml", "--checkpoint", checkpoint,
             data / "images" / "val", "--output-dir", tmp_path / name, "--topk", "3")
        rows[name] = [(r["file_name"], r["label"]) for r in csv.DictReader(open(tmp_path / name / "predictions.csv"))]
        _run(train_cls, "--config", ROOT / "configs/cls/demo.yaml", "--checkpoint", checkpoint, *CLS_TINY,
             "--eval-only", "--output-dir", tmp_path / f"eval_{name}", f"data.root={data}", "data.demo=false")
        metrics[name] = json.loads((tmp_path / f"eval_{name}" / "metrics.json").read_text())
    assert len(rows["pytorch"]) == 3 * 12 and rows["onnx"] == rows["pytorch"] == rows["torchscript"]
    for name in ("onnx", "torchscript"):
        assert metrics[name]["top1"] == metrics["pytorch"]["top1"]
        assert metrics[name]["loss"] == pytest.approx(metrics["pytorch"]["loss"], abs=1e-5)


# -- segmentation: an mmseg-layout UperNet ----------------------------------------------------------------------------
SEG_TINY = ["model.arch=vit_micro", "model.patch_size=8", "model.embed_dim=32", "model.depth=4", "model.num_heads=2",
            "model.channels=16", "model.aux_channels=8", "model.img_size=32", "data.scale=[96,32]",
            "data.crop_size=[32,32]", "eval.crop_size=[32,32]", "eval.stride=[21,21]", "eval.min_size=32"]


@pytest.fixture(scope="module")
def seg_export(tmp_path_factory):
    """A UperNet (random, decisive class logits) in the mmseg layout, the demo's segmentation data (64 px scenes, so
    that 32 px windows slide) and the ONNX export."""
    from maetransfer.checkpoint import read_checkpoint, to_mmseg
    from maetransfer.seg.segmentor import build_segmentor

    tmp = tmp_path_factory.mktemp("seg")
    data = write_demo_ade20k(tmp / "ADEChallengeData2016", 2, 4, 64)
    cfg = load_config("configs/seg/demo.yaml", [f"data.root={data}", *SEG_TINY])
    torch.manual_seed(0)
    model = build_segmentor(cfg.model).eval()
    torch.nn.init.normal_(model.decode_head.conv_seg.weight, std=0.5)
    torch.save({"model": model.state_dict()}, tmp / "ours.pth")
    ckpt = read_checkpoint(tmp / "ours.pth")
    state = to_mmseg(ckpt)["state_dict"]
    state.update({k: v for k, v in ckpt.other.items() if k.startswith(("decode_head.", "auxiliary_head.", "neck."))})
    torch.save({"state_dict": state}, tmp / "mmseg.pth")
    common = ["--config", ROOT / "configs/seg/demo.yaml", f"data.root={data}", "data.demo=false", *SEG_TINY]
    meta = _run(export_tool, *common, "--checkpoint", tmp / "mmseg.pth", "--output-dir", tmp / "onnx")
    return data, tmp, common, meta


def test_exported_segmentor_predicts_and_evaluates_as_pytorch(seg_export, tmp_path):
    data, tmp, common, meta = seg_export
    assert meta["check"]["passed"] and meta["input_size"] == [32, 32] and meta["eval"]["mode"] == "slide"
    train_seg = load_tool("train_seg")
    maps, metrics = {}, {}
    for name, checkpoint in (("pytorch", tmp / "mmseg.pth"), ("onnx", tmp / "onnx" / "model.onnx")):
        _run(predict_tool, "--config", tmp / "onnx" / "config.yaml", "--checkpoint", checkpoint,
             data / "images" / "validation", "--output-dir", tmp_path / name)
        maps[name] = [np.asarray(Image.open(p)) for p in sorted((tmp_path / name / "labels").glob("*.png"))]
        _run(train_seg, *common, "--eval-only", "--checkpoint", checkpoint, "--output-dir", tmp_path / f"eval_{name}")
        metrics[name] = json.loads((tmp_path / f"eval_{name}" / "metrics.json").read_text())
    assert len(maps["onnx"]) == 4 and maps["onnx"][0].shape == (64, 64)
    agreement = np.mean([np.mean(a == b) for a, b in zip(maps["onnx"], maps["pytorch"])])
    assert agreement >= 0.999, agreement
    assert len(set(np.unique(np.concatenate([m.ravel() for m in maps["pytorch"]])))) > 1  # not one class everywhere
    assert metrics["onnx"]["mIoU"] == metrics["pytorch"]["mIoU"] and metrics["onnx"]["aAcc"] == metrics["pytorch"]["aAcc"]


# -- detection: a detectron2-layout ViTDet ----------------------------------------------------------------------------
DET_TINY = ["model.arch=vit_micro", "model.patch_size=8", "model.embed_dim=32", "model.depth=2", "model.num_heads=2",
            "model.img_size=64", "model.pretrain_img_size=64", "model.window_size=4", "model.global_blocks=[1]",
            "model.out_channels=16", "model.head_dim=16", "model.box_fc_dim=32", "model.rpn_post_nms_top_n_test=40"]


@pytest.fixture(scope="module")
def det_export(tmp_path_factory):
    """A ViTDet (random, confident heads) in detectron2's layout, the demo's detection data and its ONNX and
    TorchScript exports."""
    from benchmarks.compare_detectron2 import confident_heads
    from maetransfer.checkpoint import to_detectron2_detector
    from maetransfer.det.model import build_mask_rcnn

    tmp = tmp_path_factory.mktemp("det")
    data = write_demo_coco(tmp / "coco", num_train=1, num_val=6, size=64, max_shapes=3)
    cfg = load_config("configs/det/demo.yaml", DET_TINY)
    torch.manual_seed(0)
    model = build_mask_rcnn(cfg, 6).eval()
    confident_heads(model, 0)
    torch.save(to_detectron2_detector(model.state_dict(), "ours"), tmp / "vitdet.pth")
    common = ["--config", ROOT / "configs/det/demo.yaml", *DET_TINY]
    meta = {fmt: _run(export_tool, *common, "--checkpoint", tmp / "vitdet.pth", "--output-dir", tmp / fmt, "--format",
                      fmt, "--image", data / "val2017" / "000000000001.png") for fmt in ("onnx", "torchscript")}
    return data, tmp, common, meta


def test_exported_detector_predicts_and_evaluates_as_pytorch(det_export, tmp_path):
    """On the demo's validation images: the COCO results of --eval-only matched detection by detection (same class,
    box IoU >= 0.99, score within 1e-3), the same AP, and predict.py's predictions.json likewise."""
    data, tmp, common, meta = det_export
    assert meta["onnx"]["check"]["passed"] and meta["onnx"]["check"]["detections"] > 0
    assert meta["onnx"]["opset"] == 17 and meta["onnx"]["pixel_mean"] == pytest.approx([123.675, 116.28, 103.53])
    train_det = load_tool("train_det")
    runs = {}
    for name, checkpoint in (("pytorch", tmp / "vitdet.pth"), ("onnx", tmp / "onnx" / "model.onnx"),
                             ("torchscript", tmp / "torchscript" / "model.pt")):
        _run(train_det, *common, "--eval-only", "--checkpoint", checkpoint, "--output-dir", tmp_path / f"eval_{name}",
             f"data.root={data}", "data.demo=false")
        _run(predict_tool, "--config", tmp / "onnx" / "config.yaml", "--checkpoint", checkpoint, data / "val2017",
             "--output-dir", tmp_path / name, "--score-thresh", "0.2")
        runs[name] = {"eval": tmp_path / f"eval_{name}", "predict": tmp_path / name}

    def by_image(results):
        grouped = {}
        for r in results:
            x, y, w, h = r["bbox"]
            d = grouped.setdefault(r.get("file_name", r["image_id"]), {"boxes": [], "scores": [], "labels": []})
            d["boxes"].append([x, y, x + w, y + h])
            d["scores"].append(r["score"])
            d["labels"].append(r["category_id"])
        return {k: {n: torch.tensor(v) for n, v in d.items()} for k, d in grouped.items()}

    reference = {f: by_image(json.loads((runs["pytorch"][kind] / f).read_text()))
                 for kind, f in (("eval", "coco_instances_results.json"), ("predict", "predictions.json"))}
    assert sum(len(d["scores"]) for d in reference["predictions.json"].values()) >= 10
    for name in ("onnx", "torchscript"):
        for kind, file in (("eval", "coco_instances_results.json"), ("predict", "predictions.json")):
            exported = by_image(json.loads((runs[name][kind] / file).read_text()))
            assert exported.keys() == reference[file].keys()
            for key, ref in reference[file].items():
                assert len(exported[key]["scores"]) == len(ref["scores"])
                assert match_detections(ref, exported[key])["matched"] == len(ref["scores"]), (name, kind, key)
        ours = json.loads((runs[name]["eval"] / "metrics.json").read_text())
        theirs = json.loads((runs["pytorch"]["eval"] / "metrics.json").read_text())
        for task in ("bbox", "segm"):
            assert ours[task]["AP"] == pytest.approx(theirs[task]["AP"], abs=1e-6)


def test_an_exported_detector_that_finds_nothing_predicts_nothing(det_export, tmp_path):
    """Zero detections: the graph's outputs have zero rows (the mask head runs on no box), and predict.py writes an
    empty predictions.json, as with the PyTorch model."""
    data, tmp, common, _ = det_export
    meta = _run(export_tool, *common, "model.box_score_thresh=1.0", "--checkpoint", tmp / "vitdet.pth", "--output-dir",
                tmp_path / "none")
    assert meta["check"]["passed"] and meta["check"]["detections"] == meta["check"]["detections_exported"] == 0
    for checkpoint in (tmp / "vitdet.pth", tmp_path / "none" / "model.onnx"):
        records = _run(predict_tool, "--config", tmp_path / "none" / "config.yaml", "--checkpoint", checkpoint,
                       data / "val2017", "--output-dir", tmp_path / checkpoint.stem, "--score-thresh", "0")
        assert records == []


# -- oracle: a file written by detectron2 itself -----------------------------------------------------------------------
def test_a_detectron2_written_vitdet_exports_and_predicts_what_detectron2_does(tmp_path):
    """detectron2's DetectionCheckpointer writes a ViTDet; tools/export.py exports that file, and tools/predict.py
    on the ONNX model predicts what detectron2's DefaultPredictor does with the same file, on a photo."""
    detectron2 = pytest.importorskip("detectron2")
    pytest.importorskip("detectron2._C")
    cbook = pytest.importorskip("matplotlib.cbook")
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.data import transforms as T
    from detectron2.data.detection_utils import read_image
    from detectron2.engine import DefaultPredictor

    from benchmarks.compare_detectron2 import confident_heads, detectron2_model, match
    from maetransfer.checkpoint import to_detectron2_detector
    from maetransfer.det.model import build_mask_rcnn
    from maetransfer.det.visualize import results_to_instances

    vitdet = Path(detectron2.__file__).resolve().parents[1] / "projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py"
    if not vitdet.is_file():
        pytest.skip("detectron2 source tree with projects/ViTDet not found")
    cfg = load_config("configs/det/demo.yaml")
    torch.manual_seed(0)
    ours = build_mask_rcnn(cfg, 80).eval()
    confident_heads(ours, 0)
    torch.save(to_detectron2_detector(ours.state_dict(), "ours"), tmp_path / "weights.pth")
    model = detectron2_model(str(vitdet), cfg, 80, tmp_path / "weights.pth")
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model_final")  # detectron2's own file
    written = tmp_path / "model_final.pth"

    reference = DefaultPredictor.__new__(DefaultPredictor)  # its __init__ builds yacs-config models only
    reference.cfg = get_cfg()
    reference.cfg.MODEL.DEVICE = "cpu"
    reference.model = model.eval()
    size = int(cfg.model.img_size)
    reference.aug, reference.input_format = T.ResizeShortestEdge([size, size], size), "RGB"
    photo = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    instances = reference(read_image(str(photo), format="BGR"))["instances"]
    theirs = {"boxes": instances.pred_boxes.tensor, "scores": instances.scores, "labels": instances.pred_classes,
              "masks": instances.pred_masks}

    meta = _run(export_tool, "--config", "configs/det/demo.yaml", "--checkpoint", written, "--output-dir",
                tmp_path / "onnx", "--image", photo)
    assert meta["check"]["passed"]
    records = _run(predict_tool, "--config", "configs/det/demo.yaml", "--checkpoint", tmp_path / "onnx/model.onnx",
                   photo, "--output-dir", tmp_path / "out", "--score-thresh", "0")
    from maetransfer.data.coco import COCO_CATEGORIES
    mine = results_to_instances(records, {cat_id: i for i, (cat_id, _) in enumerate(COCO_CATEGORIES)})
    stats = match(theirs, mine, 0.99, 1e-4)
    print(f"detectron2 DefaultPredictor vs exported ONNX: {stats['matched']} of {stats['reference']} matched")
    assert stats["reference"] >= 10 and stats["ours"] == stats["reference"]
    assert stats["matched"] >= 0.99 * stats["reference"] and stats["score_close"] >= 0.99 * stats["reference"]
    assert min(stats["mask_ious"]) >= 0.95


# -- bad input, as a user meets it --------------------------------------------------------------------------------------
def test_export_errors_are_one_line_and_leave_earlier_files_untouched(det_export, seg_export, cls_export, capsys,
                                                                      tmp_path):
    data, tmp, common, _ = det_export
    seg_tmp = seg_export[1]
    cls_tmp = cls_export[2]
    earlier = tmp / "onnx"
    before = _snapshot(earlier)

    code, err = _fails(capsys, export_tool, *common, "--checkpoint", tmp / "vitdet.pth", "--output-dir", earlier)
    assert code == 2 and err == [f"error: {earlier} holds 2 files of an earlier export, e.g. model.onnx: "
                                 "pass --overwrite to replace them, or choose another --output-dir"]
    code, err = _fails(capsys, export_tool, *common, "--checkpoint", seg_tmp / "mmseg.pth", "--output-dir",
                       tmp_path / "wrong_task")
    assert code == 1 and err == [f"error: {seg_tmp / 'mmseg.pth'}: a segmentation model, but the config is a "
                                 "detection recipe"]
    code, err = _fails(capsys, export_tool, *common, "--checkpoint", tmp / "vitdet.pth", "--output-dir",
                       tmp_path / "old_opset", "--opset", "13")
    assert code == 1 and err == ["error: --opset 13: RoIAlign(aligned=True), the detector's pooler, exports "
                                 "correctly only from opset 16; use --opset 17"]
    assert not (tmp_path / "wrong_task").exists() and not (tmp_path / "old_opset" / "model.onnx").exists()

    # the exported files given to predict and --eval-only: corrupt, another task's, another input size
    corrupt = tmp_path / "corrupt" / "model.onnx"
    corrupt.parent.mkdir()
    corrupt.write_bytes((earlier / "model.onnx").read_bytes()[:5000])
    images = data / "val2017"
    config = earlier / "config.yaml"
    result = subprocess.run([sys.executable, "tools/predict.py", "--config", str(config), "--checkpoint", str(corrupt),
                             str(images), "--output-dir", str(tmp_path / "p1")], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)  # as a user runs it
    err = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(err) == 1 and err[0].startswith(f"error: {corrupt}: not a readable ONNX "
                                                                          "model (")
    code, err = _fails(capsys, predict_tool, "--config", config, "--checkpoint", cls_tmp / "onnx" / "model.onnx",
                       images, "--output-dir", tmp_path / "p2")
    assert code == 1 and err == [f"error: {cls_tmp / 'onnx' / 'model.onnx'}: an exported classification model, but "
                                 "the config is a detection recipe"]
    code, err = _fails(capsys, load_tool("train_det"), *common, "model.img_size=96", "--eval-only", "--checkpoint",
                       earlier / "model.onnx", "--output-dir", tmp_path / "e1", f"data.root={data}",
                       "data.demo=false")
    assert code == 1 and err == [f"error: {earlier / 'model.onnx'}: exported for 64x64 inputs, but the config's "
                                 "model.img_size gives 96x96: use the config it was exported from"]
    assert _snapshot(earlier) == before
    assert not any((tmp_path / p).exists() for p in ("p1", "p2"))


def test_an_export_that_disagrees_with_pytorch_is_not_written(cls_export, capsys, tmp_path, monkeypatch):
    """A wrong graph written silently (as pytorch/pytorch#169178 reports of an exporter) is caught by the check: one
    line naming the largest difference, and no folder left behind."""
    from maetransfer.export import exporter

    write_graph = exporter.write_graph

    def wrong_graph(model, *args, **kwargs):
        broken = __import__("copy").deepcopy(model)
        with torch.no_grad():
            broken.head.bias.add_(torch.arange(6.0))  # other logits, another top-1
        return write_graph(broken, *args, **kwargs)

    monkeypatch.setattr(exporter, "write_graph", wrong_graph)
    _, data, tmp, _, _ = cls_export
    out = tmp_path / "wrong"
    code, err = _fails(capsys, export_tool, "--config", ROOT / "configs/cls/demo.yaml", "--checkpoint",
                       tmp / "finetuned.pth", "--output-dir", out, *CLS_TINY)
    err = [line for line in err if not line.startswith("warning: ")]  # the file names no classes
    assert code == 1 and len(err) == 1
    assert err[0].startswith("error: the exported cls model disagrees with PyTorch: largest logit difference 5 ")
    assert err[0].endswith(f"; nothing was written to {out}") and not out.exists()


def test_a_gpu_without_onnxruntimes_cuda_provider_runs_the_model_on_the_cpu(capsys, monkeypatch):
    import onnxruntime

    from maetransfer.export.runtime import _ort_providers

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert _ort_providers(torch.device("cuda")) == ["CPUExecutionProvider"]
    assert capsys.readouterr().err.strip().splitlines() == [
        "warning: device cuda: this onnxruntime has no CUDA provider (pip install onnxruntime-gpu); the exported "
        "model runs on the CPU"]


def test_convert_checkpoint_to_onnx_points_to_the_exporter(tmp_path, capsys):
    code, err = _fails(capsys, load_tool("convert_checkpoint"), tmp_path / "any.pth", tmp_path / "out.onnx", "--to",
                       "onnx")
    assert code == 2 and err[-1].endswith("argument --to: onnx is a deployment format: a trained model is exported "
                                          "(and checked against PyTorch) by tools/export.py --format onnx")


def test_a_second_export_into_the_same_folder_from_the_command_line_is_one_line(cls_export):
    """In a separate process, as a user runs it: exit 2, one line on stderr, the earlier export byte-identical;
    --overwrite replaces it."""
    _, data, tmp, _, _ = cls_export
    out = tmp / "onnx"
    before = _snapshot(out)
    command = [sys.executable, "tools/export.py", "--config", "configs/cls/demo.yaml", "--checkpoint",
               str(tmp / "finetuned.pth"), "--output-dir", str(out), *CLS_TINY]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"error: {out} holds 2 files of an earlier export, e.g. "
                                                  "model.onnx: pass --overwrite to replace them, or choose another "
                                                  "--output-dir"]
    assert _snapshot(out) == before
    copy = tmp / "onnx_copy"
    shutil.copytree(out, copy)
    result = subprocess.run([*command[:-len(CLS_TINY) - 2], "--output-dir", str(copy), "--overwrite", *CLS_TINY],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "cls model exported to" in result.stdout and (copy / "model.onnx").is_file()
