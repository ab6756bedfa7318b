"""tools/predict.py and maetransfer.predict against independent references: detections equal the COCO evaluator's
results for the same checkpoint, label maps reproduce the evaluation's mIoU and top-1 labels its accuracy (recomputed
here from the files and the data set's own labels), top-k equals a timm ViT loaded from the same official-layout file,
and (where they are installed) detectron2's DefaultPredictor and mmseg's inference_model give what a ViTDet or mmseg
file predicts here. Bad input is checked as a user meets it: main(), the exit code, one line, earlier files
byte-identical."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maetransfer.config import load_config
from maetransfer.data.ade import ADE20K_CLASSES, write_demo_ade20k
from maetransfer.data.cls import write_demo_data
from maetransfer.data.coco import COCO_CATEGORIES, write_demo_coco
from maetransfer.data.demo import render_scenes
from maetransfer.predict import Predictor
from tool_modules import load_tool

ROOT = Path(__file__).resolve().parent.parent


predict_tool = load_tool("predict")


def _predict(*argv):
    return predict_tool.main([str(a) for a in argv])


def _fails(capsys, *argv) -> tuple:
    """(exit code, stdout, stderr) of a predict.py run that ends with an error."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        _predict(*argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- detection ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def det_run(tmp_path_factory):
    """A tiny detector trained here for 3 iterations: enough detections above the model's 0.05 to compare."""
    from test_det_tool import _args, _tool
    tmp = tmp_path_factory.mktemp("det")
    data = write_demo_coco(tmp / "coco", num_train=6, num_val=3, size=64, max_shapes=2)
    _tool().main(_args(data, tmp / "run"))
    return data, tmp / "run"


def test_detections_equal_the_evaluators_and_carry_the_class_names(det_run, tmp_path):
    data, run = det_run
    records = _predict("--config", run / "config.yaml", "--checkpoint", run / "checkpoint.pth", data / "val2017",
                       "--output-dir", tmp_path / "out", "--score-thresh", "0")
    written = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert written == json.loads(json.dumps(records))
    evaluated = json.loads((run / "coco_instances_results.json").read_text())
    assert len(evaluated) >= 20
    ids = {img["file_name"]: img["id"] for img in
           json.loads((data / "annotations" / "instances_val2017.json").read_text())["images"]}
    names = dict(zip([1, 3, 5, 7, 9, 11], ["disc", "square", "triangle", "ring", "cross", "bar"]))
    assert all(r["category_name"] == names[r["category_id"]] for r in written)
    assert [dict(r, image_id=ids[r["file_name"]]) for r in written] == [
        dict(r, file_name=next(f for f, i in ids.items() if i == r["image_id"]),
             category_name=names[r["category_id"]]) for r in evaluated]
    for name in ids:  # one picture per image, small ones enlarged 8x
        assert Image.open(tmp_path / "out" / name).size == (512, 512)

    # the Python API on a PIL image: the same detections as the file
    predictor = Predictor.from_config(run / "config.yaml", str(run / "checkpoint.pth"), score_thresh=0.3)
    first = predictor(Image.open(data / "val2017" / "000000000001.png"))
    expected = [r for r in written if r["file_name"] == "000000000001.png" and r["score"] >= 0.3]
    assert first["scores"].tolist() == pytest.approx([r["score"] for r in expected], abs=0)
    assert first["masks"].shape[1:] == (64, 64) and first["masks"].dtype == torch.bool


def test_evaluation_draws_its_own_predictions_without_a_second_forward_pass(det_run, tmp_path, monkeypatch):
    from test_det_tool import _args, _tool

    from maetransfer.det.model import MaskRCNN
    data, run = det_run
    calls = []
    forward = MaskRCNN.forward
    monkeypatch.setattr(MaskRCNN, "forward", lambda self, *a, **k: calls.append(1) or forward(self, *a, **k))
    _tool().main(_args(data, tmp_path / "eval", "--eval-only", "--checkpoint", str(run / "checkpoint.pth")))
    assert len(calls) == 3  # the three validation images, once each
    picture = Image.open(tmp_path / "eval" / "predictions.png")
    assert picture.size == (3 * 512 + 2 * 6, 512)  # 512-px panels side by side, no padding to a common square
    assert json.loads((tmp_path / "eval" / "coco_instances_results.json").read_text()) == json.loads(
        (run / "coco_instances_results.json").read_text())


def test_the_pictures_fill_each_instance_in_its_own_colour():
    from maetransfer.det.visualize import draw_detections
    image = torch.zeros(3, 40, 60, dtype=torch.uint8)
    masks = torch.zeros(2, 40, 60, dtype=torch.bool)
    masks[0, 5:15, 5:20] = True
    masks[1, 20:35, 30:55] = True
    detections = {"boxes": torch.tensor([[5.0, 5, 20, 15], [30, 20, 55, 35]]), "scores": torch.tensor([0.9, 0.2]),
                  "labels": torch.tensor([0, 1]), "masks": masks}
    picture = np.asarray(draw_detections(image, detections, ["cat", "dog"], score_thresh=0.5))
    assert picture.shape == (360, 540, 3)  # 9x: the long side reaches 512
    inside, other = picture[12 * 9, 12 * 9], picture[30 * 9, 45 * 9]
    assert inside.any() and not other.any()  # the 0.2 detection is below the threshold: not drawn


def test_unreadable_images_are_one_line_each_and_the_others_are_predicted(det_run, tmp_path, capsys):
    data, run = det_run
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    good = (data / "val2017" / "000000000001.png").read_bytes()
    (photos / "a.png").write_bytes(good)
    (photos / "sub" / "b.png").write_bytes(good)
    (photos / "cut.png").write_bytes(good[: len(good) // 2])  # truncated
    (photos / "notes.txt").write_text("not an image")
    code, out, err = _fails(capsys, "--config", run / "config.yaml", "--checkpoint", run / "checkpoint.pth", photos,
                            "--output-dir", tmp_path / "out")
    lines = err.strip().splitlines()
    assert code == 1 and lines[-1] == (f"error: 1 of the 3 images could not be read (each is named above); the other 2 "
                                       f"were predicted into {tmp_path / 'out'}")
    warnings = [line for line in lines if line.startswith("warning: ")]
    assert len(warnings) == 1 and str(photos / "cut.png") in warnings[0] and warnings[0].endswith("; skipped")
    assert "skipped 1 file that is not an image (by the extension)" in out.splitlines()
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.*")) == [
        "a.png", "predictions.json", "sub/b.png"]
    assert {r["file_name"] for r in json.loads((tmp_path / "out" / "predictions.json").read_text())} <= {"a.png",
                                                                                                         "sub/b.png"}


def test_bad_inputs_end_with_one_line_and_leave_earlier_files_untouched(det_run, tmp_path, capsys):
    data, run = det_run
    common = ["--config", run / "config.yaml", "--checkpoint", run / "checkpoint.pth"]
    out = tmp_path / "out"
    _predict(*common, data / "val2017" / "000000000001.png", "--output-dir", out)
    before = _snapshot(out)
    assert set(before) == {Path("000000000001.png"), Path("predictions.json")}

    (tmp_path / "empty").mkdir()
    names = tmp_path / "names.txt"
    names.write_text("a\nb\n")
    encoder = tmp_path / "encoder.pth"
    torch.save({"model": {k[len("backbone.net."):]: v for k, v in torch.load(run / "checkpoint.pth")["model"].items()
                          if k.startswith("backbone.net.")}}, encoder)
    image = data / "val2017" / "000000000002.png"
    untasked = tmp_path / "untasked.yaml"  # the task comes from the config's task: key, never from a guess
    untasked.write_text("".join(line + "\n" for line in (run / "config.yaml").read_text().splitlines()
                                if not line.startswith("task:")))
    fresh = tmp_path / "fresh"  # runs that fail before predicting create nothing there
    cases = [
        ([*common, tmp_path / "empty", "--output-dir", fresh], 1, f"error: {tmp_path / 'empty'}: no image files"),
        ([*common, tmp_path / "missing.jpg", "--output-dir", fresh], 1,
         f"error: {tmp_path / 'missing.jpg'}: no such file"),
        ([*common, image, "--output-dir", fresh, "--class-names", names], 1,
         f"error: {names}: 2 class names, but the model in {run / 'checkpoint.pth'} predicts 6 classes"),
        (["--config", run / "config.yaml", "--checkpoint", encoder, image, "--output-dir", fresh], 1,
         f"error: {encoder}: not a Mask R-CNN checkpoint"),
        (["--config", "configs/det/demo.yaml", "--checkpoint", run / "checkpoint.pth", image, "--output-dir", fresh], 1,
         f"error: {run / 'checkpoint.pth'}:"),  # a detector of another size
        (["--config", "configs/seg/demo.yaml", "--checkpoint", run / "checkpoint.pth", image, "--output-dir", fresh], 1,
         f"error: {run / 'checkpoint.pth'}: a detection model, but the config is a segmentation recipe"),
        (["--config", "configs/pretrain/demo.yaml", "--checkpoint", run / "checkpoint.pth", image, "--output-dir",
          fresh], 2, "error: configs/pretrain/demo.yaml: a pretraining recipe; only a detection, segmentation or "
                     "classification model predicts"),
        (["--config", untasked, "--checkpoint", run / "checkpoint.pth", image, "--output-dir", fresh], 2,
         f"error: {untasked}: the config names no task (a top-level 'task:' key"),
        ([*common, image, "--output-dir", fresh, "--topk", "3"], 2, "error: --topk applies to classification recipes"),
        ([*common, data / "val2017" / "000000000001.png", "--output-dir", out], 2,
         f"error: {out} holds 2 files of an earlier prediction, e.g. 000000000001.png: pass --overwrite"),
        ([*common, data / "val2017", "--output-dir", data / "val2017", "--overwrite"], 2,
         f"error: {data / 'val2017' / '000000000001.png'} is an input image: choose another --output-dir"),
    ]
    for argv, expected_code, start in cases:
        code, _, err = _fails(capsys, *argv)
        assert code == expected_code and start in err and len(err.strip().splitlines()) == 1, (argv, err)
        assert _snapshot(out) == before and not fresh.exists()
    assert not (data / "val2017" / "predictions.json").exists()

    _predict(*common, image, "--output-dir", out, "--overwrite")  # asked for: the new image's picture is added
    assert (out / "000000000002.png").is_file()


# -- segmentation ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    from test_seg_tool import TINY, train_seg
    tmp = tmp_path_factory.mktemp("seg")
    data = write_demo_ade20k(tmp / "ADEChallengeData2016", 8, 3, 64)
    train_seg.main(["--output-dir", str(tmp / "run"), f"data.root={data}", *TINY])
    return data, tmp / "run"


def _miou(predictions, labels, num_classes) -> float:
    """mmseg's mIoU (percent, 2 decimals) of (pred, label) maps, labels in the ADE20K file format (0 = ignored)."""
    inter, union = np.zeros(num_classes), np.zeros(num_classes)
    for pred, raw in zip(predictions, labels):
        keep = raw > 0
        pred, label = pred[keep], raw[keep].astype(np.int64) - 1
        for c in range(num_classes):
            inter[c] += np.sum((pred == c) & (label == c))
            union[c] += np.sum((pred == c) | (label == c))
    with np.errstate(invalid="ignore"):
        return round(float(np.nanmean(inter / np.where(union > 0, union, np.nan))) * 100, 2)


def test_label_maps_reproduce_the_evaluations_miou(seg_run, tmp_path):
    data, run = seg_run
    out = tmp_path / "out"
    _predict("--config", run / "config.yaml", "--checkpoint", run / "checkpoint.pth", data / "images" / "validation",
             "--output-dir", out)
    stems = sorted(p.stem for p in (data / "images" / "validation").glob("*.jpg"))
    predictions = [np.asarray(Image.open(out / "labels" / f"{s}.png")) for s in stems]
    assert all(p.dtype == np.uint8 and p.shape == (64, 64) for p in predictions)
    labels = [np.asarray(Image.open(data / "annotations" / "validation" / f"{s}.png")) for s in stems]
    assert _miou(predictions, labels, 6) == json.loads((run / "metrics.json").read_text())["mIoU"]
    records = json.loads((out / "predictions.json").read_text())
    assert [r["file_name"] for r in records] == [f"{s}.jpg" for s in stems]
    for record, pred in zip(records, predictions):
        assert record["label_map"] == f"labels/{Path(record['file_name']).stem}.png"
        assert {c["label"] for c in record["classes"]} == set(np.unique(pred).tolist())
        assert sum(c["fraction"] for c in record["classes"]) == pytest.approx(1, abs=1e-5)
        assert {c["name"] for c in record["classes"]} <= {"disc", "square", "triangle", "ring", "cross", "bar"}
    overlay = Image.open(out / f"{stems[0]}.png")
    assert overlay.height == 512 and overlay.width > 512  # the image enlarged 8x, the legend on its right


def test_config_overrides_after_the_options_change_the_inference_as_they_change_the_evaluation(seg_run, tmp_path,
                                                                                                capsys):
    """predict.py takes dotted key=value overrides as the training tools do: with eval.flip=true its label maps give
    the mIoU of --eval-only with the same override; a misspelt key is one line naming the closest one."""
    from test_seg_tool import train_seg

    data, run = seg_run
    flipped = train_seg.main(["--config", str(run / "config.yaml"), "--eval-only", "--checkpoint",
                              str(run / "checkpoint.pth"), "--output-dir", str(tmp_path / "eval"), "eval.flip=true"])
    out = tmp_path / "out"
    _predict("--config", run / "config.yaml", "--checkpoint", run / "checkpoint.pth", data / "images" / "validation",
             "eval.flip=true", "--output-dir", out)
    stems = sorted(p.stem for p in (data / "images" / "validation").glob("*.jpg"))
    predictions = [np.asarray(Image.open(out / "labels" / f"{s}.png")) for s in stems]
    labels = [np.asarray(Image.open(data / "annotations" / "validation" / f"{s}.png")) for s in stems]
    assert _miou(predictions, labels, 6) == flipped["mIoU"]
    code, _, err = _fails(capsys, "--config", run / "config.yaml", "--checkpoint", run / "checkpoint.pth",
                          data / "images" / "validation", "eval.flipp=true", "--output-dir", tmp_path / "bad")
    assert code == 2 and err.strip() == "error: command line: unknown config key 'eval.flipp' (did you mean eval.flip?)"
    assert not (tmp_path / "bad").exists()


def test_ade20k_models_are_drawn_in_mmsegs_palette():
    from maetransfer.seg.visualize import class_colours, draw_segmentation
    assert class_colours(ADE20K_CLASSES)[2].tolist() == [6, 230, 230]  # sky, as mmseg draws it
    label = torch.full((40, 50), 2)
    picture = np.asarray(draw_segmentation(torch.zeros(3, 40, 50, dtype=torch.uint8), label, ADE20K_CLASSES,
                                           opacity=1.0))
    assert picture.shape[0] == 440 and (picture[200, 200] == [6, 230, 230]).all()


# -- classification ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cls_run(tmp_path_factory):
    from test_cls_train import TINY, train_cls
    tmp = tmp_path_factory.mktemp("cls")
    write_demo_data(tmp / "data", n_train=16, n_val=8, size=32, seed=1)
    train_cls.main(["--config", str(ROOT / "configs/cls/demo.yaml"), "--output-dir", str(tmp / "run"),
                    f"data.root={tmp / 'data'}", "data.demo=false", *TINY])
    return tmp / "data", tmp / "run"


def test_top1_labels_reproduce_the_evaluations_accuracy(cls_run, tmp_path):
    data, run = cls_run
    out = tmp_path / "out"
    _predict("--config", run / "config.yaml", "--checkpoint", run / "checkpoint.pth", data / "images" / "val",
             "--output-dir", out, "--topk", "3")
    val = json.loads((data / "val.json").read_text())
    truth = {Path(img["file_name"]).relative_to("images/val").as_posix(): ann["category_id"]
             for img, ann in zip(val["images"], val["annotations"])}
    names = [c["name"] for c in sorted(val["categories"], key=lambda c: c["id"])]
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(rows) == 3 * len(truth) and {r["name"] for r in rows} <= set(names)
    top1 = {r["file_name"]: int(r["label"]) for r in rows if r["rank"] == "1"}
    accuracy = 100 * sum(top1[f] == truth[f] for f in truth) / len(truth)
    assert accuracy == pytest.approx(json.loads((run / "metrics.json").read_text())["top1"])
    records = json.loads((out / "predictions.json").read_text())
    assert all(len(r["topk"]) == 3 and r["topk"][0]["probability"] >= r["topk"][1]["probability"] for r in records)
    assert Image.open(out / records[0]["file_name"]).size == (512, 512)


def test_topk_equals_a_timm_vit_loaded_from_the_same_official_file(tmp_path):
    """An official fine-tuned layout ({'model': encoder + fc_norm + head}) of an ImageNet-1k classifier: timm's own
    VisionTransformer and transforms give the same top-5, and the labels are named by timm's ImageNet descriptions."""
    from timm.data import ImageNetInfo, create_transform
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    torch.manual_seed(0)
    reference = TimmViT(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=1000,
                        global_pool="avg", fc_norm=True).eval()
    torch.nn.init.normal_(reference.head.weight, std=0.5)  # spread-out probabilities, no near ties
    torch.save({"model": reference.state_dict()}, tmp_path / "finetuned.pth")
    cfg = load_config("configs/cls/imagenet_vit_base.yaml", ["model.arch=vit_micro", "model.patch_size=8",
                                                            "model.embed_dim=32", "model.depth=2",
                                                            "model.num_heads=2", "model.img_size=32"])
    predictor = Predictor.from_config(cfg, str(tmp_path / "finetuned.pth"), device="cpu")
    scene, _ = next(render_scenes(1, 48, seed=3))
    photo = Image.fromarray(scene[:, :40])  # not square: resized and centre-cropped
    ours = predictor(photo)
    transform = create_transform(32, interpolation="bicubic", crop_pct=0.875)  # the MAE eval transform at 32 px
    with torch.no_grad():
        probs = reference(transform(photo)[None]).softmax(1)[0]
    scores, labels = probs.topk(5)
    assert ours["labels"].tolist() == labels.tolist()
    torch.testing.assert_close(ours["scores"], scores, rtol=0, atol=1e-6)
    info = ImageNetInfo()
    assert [predictor.class_names[i] for i in labels.tolist()] == [info.index_to_description(i) for i in
                                                                   labels.tolist()]


# -- oracles: detectron2 and mmseg, where installed ------------------------------------------------------------------
def test_a_vitdet_file_predicts_what_detectron2s_default_predictor_does(tmp_path):
    """detectron2's own DefaultPredictor.__call__ (reading the photo as its demo does) with a ViTDet LazyConfig model
    against tools/predict.py, the same detectron2-layout file in both, on a photo of 512x600 px."""
    detectron2 = pytest.importorskip("detectron2")
    pytest.importorskip("detectron2._C")
    cbook = pytest.importorskip("matplotlib.cbook")  # a dependency of detectron2; it ships a photo
    from detectron2.config import get_cfg
    from detectron2.data import MetadataCatalog
    from detectron2.data import transforms as T
    from detectron2.data.detection_utils import read_image
    from detectron2.engine import DefaultPredictor

    from benchmarks.compare_detectron2 import confident_heads, detectron2_model, match
    from maetransfer.checkpoint import to_detectron2_detector
    from maetransfer.det.model import build_mask_rcnn

    vitdet = Path(detectron2.__file__).resolve().parents[1] / "projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py"
    if not vitdet.is_file():
        pytest.skip("detectron2 source tree with projects/ViTDet not found")
    coco = MetadataCatalog.get("coco_2017_val")
    assert [name for _, name in COCO_CATEGORIES] == coco.thing_classes
    assert [i for i, _ in COCO_CATEGORIES] == list(coco.thing_dataset_id_to_contiguous_id)

    cfg = load_config("configs/det/demo.yaml")
    torch.manual_seed(0)
    ours = build_mask_rcnn(cfg, 80).eval()
    confident_heads(ours, 0)
    weights = tmp_path / "vitdet.pth"
    torch.save(to_detectron2_detector(ours.state_dict(), "ours"), weights)
    photo = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))

    reference = DefaultPredictor.__new__(DefaultPredictor)  # its __init__ builds yacs-config models only
    reference.cfg = get_cfg()
    reference.cfg.MODEL.DEVICE = "cpu"
    reference.model = detectron2_model(str(vitdet), cfg, 80, weights)
    size = int(cfg.model.img_size)
    reference.aug, reference.input_format = T.ResizeShortestEdge([size, size], size), "RGB"
    instances = reference(read_image(str(photo), format="BGR"))["instances"]
    theirs = {"boxes": instances.pred_boxes.tensor, "scores": instances.scores, "labels": instances.pred_classes,
              "masks": instances.pred_masks}

    records = _predict("--config", "configs/det/demo.yaml", "--checkpoint", weights, photo, "--output-dir",
                       tmp_path / "out", "--score-thresh", "0")
    label_of = {cat_id: i for i, (cat_id, _) in enumerate(COCO_CATEGORIES)}
    from maetransfer.det.visualize import results_to_instances
    mine = results_to_instances(records, label_of)
    assert [r["category_name"] for r in records] == [coco.thing_classes[int(i)] for i in mine["labels"]]
    stats = match(theirs, mine, 0.99, 1e-4)
    assert stats["reference"] >= 10 and stats["ours"] == stats["reference"]
    assert stats["matched"] >= 0.99 * stats["reference"] and stats["score_close"] >= 0.99 * stats["reference"]
    assert min(stats["mask_ious"]) >= 0.95


def test_segmentation_equals_mmsegs_inference_model(tmp_path, mmseg):
    """mmseg's inference_model with its MAE UperNet config, loaded from the mmseg-layout file of a random ViT-B
    UperNet of ours, on a photo: the same label map on every pixel but near-ties (top two scores within 1e-5)."""
    cbook = pytest.importorskip("matplotlib.cbook")
    from mmseg.apis import inference_model, init_model
    from mmseg.datasets import ADE20KDataset

    from maetransfer.checkpoint import read_checkpoint, to_mmseg
    from maetransfer.data.ade import ADE20K_PALETTE
    from maetransfer.seg.segmentor import build_segmentor

    assert [list(c) for c in ADE20K_PALETTE] == [list(c) for c in ADE20KDataset.METAINFO["palette"]]
    mm_config = Path(mmseg.__file__).parent / ".mim/configs/mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py"
    if not mm_config.is_file():
        pytest.skip("mmseg's configs/mae not found in the installed package")
    cfg = load_config("configs/seg/upernet_vit_base_ade20k.yaml", ["model.norm=BN"])
    torch.manual_seed(0)
    model = build_segmentor(cfg.model).eval()
    torch.nn.init.normal_(model.decode_head.conv_seg.weight, std=0.5)  # decisive logits: no near ties
    torch.save({"model": model.state_dict()}, tmp_path / "ours.pth")
    ckpt = read_checkpoint(tmp_path / "ours.pth")
    state = to_mmseg(ckpt)["state_dict"]
    state.update({k: v for k, v in ckpt.other.items() if k.startswith(("decode_head.", "auxiliary_head.", "neck."))})
    # meta as in the released mmseg 0.x files, which init_model reads the class names from
    torch.save({"state_dict": state, "meta": {"CLASSES": ADE20KDataset.METAINFO["classes"],
                                              "PALETTE": ADE20KDataset.METAINFO["palette"]}}, tmp_path / "mmseg.pth")
    photo = str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))

    result = inference_model(init_model(str(mm_config), str(tmp_path / "mmseg.pth"), device="cpu"), photo)
    theirs, top2 = result.pred_sem_seg.data[0].cpu(), result.seg_logits.data.topk(2, dim=0).values.cpu()
    mine = Predictor.from_config(cfg, str(tmp_path / "mmseg.pth"), device="cpu")(photo)["label_map"]
    assert mine.shape == theirs.shape
    near_tie = (top2[0] - top2[1]) <= 1e-5 * top2[0].abs()
    print(f"mmseg inference_model vs Predictor: {int((mine != theirs).sum())} of {mine.numel()} pixels differ, "
          f"{int(near_tie.sum())} near-ties")
    assert not ((mine != theirs) & ~near_tie).any()


def test_a_run_into_an_earlier_runs_folder_from_the_command_line_is_one_line(det_run, tmp_path):
    """An error path as a user meets it: a second run into an earlier run's folder, in a separate process: exit 2,
    one line on stderr, the earlier run's files byte-identical."""
    import subprocess
    import sys

    data, run = det_run
    out = tmp_path / "out"
    common = ["--config", str(run / "config.yaml"), "--checkpoint", str(run / "checkpoint.pth")]
    _predict(*common, data / "val2017" / "000000000001.png", "--output-dir", out)
    before = _snapshot(out)
    result = subprocess.run([sys.executable, "tools/predict.py", *common, str(data / "val2017" / "000000000002.png"),
                             "--output-dir", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {out} holds 1 file of an earlier prediction, e.g. predictions.json: pass --overwrite to replace "
        "it, or choose another --output-dir"]
    assert _snapshot(out) == before
