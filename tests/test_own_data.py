"""A user's own data sets at any paths (docs/own-data.md), one per task, each trained a few iterations through the
tool's main() and checked against facts written here independently of the tools: detection from a COCO json of 3
categories with ids 5, 17, 42 away from its images (class names in json order, per-category metrics under those
names, predictions in the original ids); segmentation from image / label-map folders with their own file endings and
a class-names file; classification from a CSV list with a header and class names, validated with a plain "path
index" list. Bad input as a user meets it: one line naming the file, exit 1, no output folder."""
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maetransfer.data.ade import write_demo_ade20k
from maetransfer.data.cls import DatasetError, csv_dataset, write_demo_data
from maetransfer.data.coco import CocoDetection, CocoFormatError, write_demo_coco
from test_det_model import TINY as DET_TINY
from test_faults_cli import CLS_TINY
from test_seg_tool import TINY as SEG_TINY
from tool_modules import load_tool

ROOT = Path(__file__).resolve().parent.parent
predict_tool = load_tool("predict")


def _meta(run: Path) -> dict:
    return torch.load(run / "checkpoint.pth", map_location="cpu", weights_only=False)["meta"]


def _fails(main, argv, capsys):
    """(exit code, stderr lines) of a tool's main() that must end with an error."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    return exit_info.value.code, capsys.readouterr().err.strip().splitlines()


# -- detection: a COCO json anywhere, images elsewhere, category ids 5 / 17 / 42 --------------------------------------
CATEGORIES = [{"id": 42, "name": "gadget"}, {"id": 5, "name": "widget"}, {"id": 17, "name": "sprocket"}]
ID_ORDER = [5, 17, 42]  # contiguous labels follow the sorted ids, whatever the json's order
NAMES = ["widget", "sprocket", "gadget"]


def _own_coco(tmp: Path) -> dict:
    """The demo scenes rewritten as a user's set: jsons under labels/ (train: absolute path; val: under the root),
    images under photos/<split>/ with the demo's 6 shape ids folded onto 3 categories 5, 17, 42."""
    demo = write_demo_coco(tmp / "demo", num_train=6, num_val=3, size=64, max_shapes=2)
    fold = {old: ID_ORDER[i % 3] for i, old in enumerate([1, 3, 5, 7, 9, 11])}
    project = tmp / "project"
    for split, name in (("train2017", "train"), ("val2017", "val")):
        data = json.loads((demo / "annotations" / f"instances_{split}.json").read_text())
        data["categories"] = CATEGORIES
        for ann in data["annotations"]:
            ann["category_id"] = fold[ann["category_id"]]
        (project / "labels").mkdir(parents=True, exist_ok=True)
        (project / "labels" / f"{name}_boxes_and_masks.json").write_text(json.dumps(data))
        shutil.copytree(demo / split, tmp / "photos" / name)
    return {"root": project, "train_json": project / "labels" / "train_boxes_and_masks.json",
            "val_json": "labels/val_boxes_and_masks.json", "train_images": tmp / "photos" / "train",
            "val_images": "../photos/val"}


def _det_args(paths: dict, out: Path, *extra):
    return ["--output-dir", out, f"data.root={paths['root']}", "data.demo=false", "train.init_checkpoint=",
            *(f"data.{k}={paths[k]}" for k in ("train_json", "train_images", "val_json", "val_images")),
            "train.max_iters=3", "train.batch_size=2", "train.num_workers=0", "train.checkpoint_period=3",
            "train.log_period=1", "model.rpn_post_nms_top_n_test=20", *DET_TINY, *extra]


def test_detection_on_own_coco_json_keeps_names_and_ids(tmp_path):
    paths = _own_coco(tmp_path)
    run = tmp_path / "run"
    metrics = load_tool("train_det").main([str(a) for a in _det_args(paths, run)])
    meta = _meta(run)
    assert meta["class_names"] == NAMES and meta["category_ids"] == ID_ORDER
    saved = json.loads((run / "metrics.json").read_text())
    for iou_type in ("bbox", "segm"):
        assert sorted(k for k in saved[iou_type] if k.startswith("AP-")) == sorted(f"AP-{n}" for n in NAMES)
    assert saved == json.loads(json.dumps(metrics))
    evaluated = json.loads((run / "coco_instances_results.json").read_text())
    assert evaluated and {r["category_id"] for r in evaluated} <= set(ID_ORDER)

    records = predict_tool.main(["--config", str(run / "config.yaml"), "--checkpoint", str(run / "checkpoint.pth"),
                                 str(tmp_path / "photos" / "val"), "--output-dir", str(tmp_path / "pred"),
                                 "--score-thresh", "0"])
    written = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert written == json.loads(json.dumps(records)) and written
    name_of = {c["id"]: c["name"] for c in CATEGORIES}
    assert all(r["category_name"] == name_of[r["category_id"]] for r in written)


def test_detection_json_that_is_not_there_is_one_line_and_writes_nothing(tmp_path, capsys):
    paths = dict(_own_coco(tmp_path), val_json="labels/val.json")
    code, err = _fails(load_tool("train_det").main, _det_args(paths, tmp_path / "run"), capsys)
    assert (code, err) == (1, [f"error: {paths['root'] / 'labels' / 'val.json'}: annotation file not found "
                               "(data.val_json)"])
    assert not (tmp_path / "run").exists()


def test_boxes_only_annotations_are_refused_with_the_first_annotation_named(tmp_path):
    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "imgs" / "a.png")
    boxes_only = {"images": [{"id": 1, "file_name": "a.png", "height": 32, "width": 32}],
                  "annotations": [{"id": 7, "image_id": 1, "category_id": 5, "bbox": [2, 2, 10, 10], "iscrowd": 0},
                                  {"id": 8, "image_id": 1, "category_id": 5, "bbox": [4, 4, 9, 9], "iscrowd": 0,
                                   "segmentation": []}],
                  "categories": [{"id": 5, "name": "widget"}]}
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(boxes_only))
    with pytest.raises(CocoFormatError) as err:
        CocoDetection(tmp_path / "imgs", path, filter_empty=True)
    assert str(err.value).startswith(f"{path}: annotation id 7 (image a.png) has no mask, as all 2 non-crowd "
                                     "annotations: ")
    assert "\n" not in str(err.value)
    # one mask-less annotation among masked ones: dropped from training (counted), refused for evaluation
    boxes_only["annotations"][1]["segmentation"] = [[4.0, 4.0, 13.0, 4.0, 13.0, 13.0, 4.0, 13.0]]
    path.write_text(json.dumps(boxes_only))
    assert CocoDetection(tmp_path / "imgs", path, filter_empty=True).load_target(1)["labels"].tolist() == [0]
    with pytest.raises(CocoFormatError, match=r"boxes\.json: annotation id 7 \(image a\.png\) has no mask: "):
        CocoDetection(tmp_path / "imgs", path, every_mask=True)


# -- segmentation: folders with their own endings, a class-names file -------------------------------------------------
SEG_NAMES = ["disc", "square", "triangle", "ring", "cross", "bar"]  # label value k + 1 = class k (reduce_zero_label)
PALETTE = [[200, 0, 0], [0, 200, 0], [0, 0, 200], [200, 200, 0], [0, 200, 200], [200, 0, 200]]


def _own_seg(tmp: Path) -> Path:
    """The demo scenes as <split>/photos/**/<name>_rgb.jpg + <split>/masks/**/<name>_mask.png (one sub-folder of
    nested files) and classes.txt."""
    demo = write_demo_ade20k(tmp / "demo", 6, 3, 64)
    root = tmp / "own"
    for split, name in (("training", "train"), ("validation", "val")):
        for n, image in enumerate(sorted((demo / "images" / split).glob("*.jpg"))):
            sub = "site_b/" if n % 2 else ""
            for kind, source, ending in (("photos", image, "_rgb.jpg"),
                                         ("masks", demo / "annotations" / split / f"{image.stem}.png", "_mask.png")):
                target = root / name / kind / f"{sub}{image.stem}{ending}"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(source, target)
    (root / "classes.txt").write_text("\n".join(SEG_NAMES) + "\n")
    return root


def _seg_args(root: Path, out: Path, *extra):
    return ["--output-dir", out, f"data.root={root}", "data.img_dir=photos", "data.ann_dir=masks",
            "data.img_suffix=_rgb.jpg", "data.seg_map_suffix=_mask.png", "data.train_split=train",
            "data.val_split=val", "data.class_names_file=classes.txt", "model.num_classes=6", *SEG_TINY, *extra]


def test_segmentation_on_own_folders_with_suffixes_and_names_file(tmp_path):
    root = _own_seg(tmp_path)
    run = tmp_path / "run"
    load_tool("train_seg").main([str(a) for a in _seg_args(root, run, f"data.palette={PALETTE}")])
    meta = _meta(run)
    assert meta["class_names"] == SEG_NAMES and meta["palette"] == PALETTE
    saved = json.loads((run / "metrics.json").read_text())
    assert [c["class"] for c in saved["per_class"]] == SEG_NAMES
    assert len(list((run / "vis").glob("*.png"))) == 2

    photo = next((root / "val" / "photos").glob("*_rgb.jpg"))
    predict_tool.main(["--config", str(run / "config.yaml"), "--checkpoint", str(run / "checkpoint.pth"),
                       str(photo), "--output-dir", str(tmp_path / "pred")])
    written = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert [r["file_name"] for r in written] == [photo.name]
    assert all(c["name"] == SEG_NAMES[c["label"]] for c in written[0]["classes"])
    label_map = np.asarray(Image.open(tmp_path / "pred" / written[0]["label_map"]))
    assert label_map.shape == (64, 64) and label_map.max() < 6


def test_palette_is_one_rgb_colour_per_class():
    from maetransfer.config import ConfigError, load_config
    from maetransfer.seg.train import class_palette
    from maetransfer.seg.visualize import class_colours
    cfg = load_config("configs/seg/demo.yaml", [f"data.palette={PALETTE}"])
    assert class_colours(SEG_NAMES, class_palette(cfg, 6)).tolist() == PALETTE
    assert class_palette(load_config("configs/seg/demo.yaml"), 6) is None
    assert len(np.unique(class_colours(SEG_NAMES), axis=0)) == 6  # none given: distinct colours
    for bad, problem in (([[1, 2, 3]], "data.palette has 1 colours but model.num_classes is 6"),
                         ([*PALETTE[:5], [0, 0, 256]], "data.palette[5] is [0, 0, 256]: give each class's colour as "
                                                        "[r, g, b] in 0..255")):
        with pytest.raises(ConfigError) as err:
            class_palette(load_config("configs/seg/demo.yaml", [f"data.palette={bad}"]), 6)
        assert str(err.value) == problem


def test_segmentation_label_folder_that_is_not_there_is_one_line(tmp_path, capsys):
    root = _own_seg(tmp_path)
    code, err = _fails(load_tool("train_seg").main, _seg_args(root, tmp_path / "run", "data.ann_dir=labels"),
                       capsys)
    assert (code, err) == (1, [f"error: {root / 'labels' / 'val'}: directory not found, nor {root / 'val' / 'labels'} "
                               "(data.img_dir=photos, data.ann_dir=labels, split val, under data.root)"])
    assert not (tmp_path / "run").exists()


# -- classification: a CSV list -----------------------------------------------------------------------------------
def _own_lists(tmp: Path) -> Path:
    """The demo images under root/pics; classes.txt naming the 6 classes in reverse alphabetical order; train.csv
    with a header and class names (comma-separated, a path with a comma quoted); val.txt outside the root as
    "path index" lines (index = the line of classes.txt)."""
    demo = write_demo_data(tmp / "demo", n_train=8, n_val=4, size=32, seed=1)
    root = tmp / "root"
    shutil.copytree(demo / "images", root / "pics")
    names = sorted(json.loads((demo / "train.json").read_text())["categories"], key=lambda c: c["name"])
    names = [c["name"] for c in reversed(names)]
    (root / "classes.txt").write_text("\n".join(names) + "\n")
    odd = next((root / "pics" / "train").rglob("*.png"))
    odd.rename(odd.with_name("shot, no 1.png"))
    with open(root / "train.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        for p in sorted((root / "pics" / "train").rglob("*.png")):
            writer.writerow([p.relative_to(root / "pics").as_posix(), p.parent.name])
    (tmp / "lists").mkdir()
    (tmp / "lists" / "val.txt").write_text("".join(f"{p.relative_to(root / 'pics').as_posix()} "
                                                   f"{names.index(p.parent.name)}\n"
                                                   for p in sorted((root / "pics" / "val").rglob("*.png"))))
    return root


def _cls_args(root: Path, out: Path, *extra):
    return ["--config", ROOT / "configs/cls/demo.yaml", "--output-dir", out, f"data.root={root}", "data.format=csv",
            "data.train_split=train.csv", f"data.val_split={root.parent / 'lists' / 'val.txt'}",
            "data.train_images=pics", "data.val_images=pics", "data.categories=classes.txt", *CLS_TINY, *extra]


def test_classification_from_a_csv_list(tmp_path):
    root = _own_lists(tmp_path)
    names = (root / "classes.txt").read_text().split()
    assert names == sorted(names, reverse=True) and len(names) == 6
    run = tmp_path / "run"
    load_tool("train_cls").main([str(a) for a in _cls_args(root, run)])
    assert _meta(run)["class_names"] == names
    per_class = list(csv.reader(open(run / "per_class_accuracy.csv")))
    assert [row[1] for row in per_class[1:]] == names

    picture = next((root / "pics" / "val").rglob("*.png"))
    records = predict_tool.main(["--config", str(run / "config.yaml"), "--checkpoint", str(run / "checkpoint.pth"),
                                 str(picture), "--output-dir", str(tmp_path / "pred")])
    assert [r["file_name"] for r in records] == [picture.name]
    assert all(e["name"] == names[e["label"]] for e in records[0]["topk"])


def test_classification_list_naming_a_missing_image_is_one_line(tmp_path, capsys):
    root = _own_lists(tmp_path)
    with open(root / "train.csv", "a") as f:
        f.write("train/disc/not_there.png,disc\n")
    lines = (root / "train.csv").read_text().splitlines()
    code, err = _fails(load_tool("train_cls").main, _cls_args(root, tmp_path / "run"), capsys)
    assert (code, err) == (1, [f"error: {root / 'train.csv'}: line {len(lines)}: image "
                               f"{root / 'pics' / 'train/disc/not_there.png'} not found (1 of the {len(lines) - 1} "
                               "listed images are missing)"])
    assert not (tmp_path / "run").exists()


def test_csv_labels_are_indices_or_names_of_the_training_list(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "train.csv").write_text("a.jpg,cat\na.jpg,dog\n")
    (tmp_path / "val.csv").write_text("image,class\na.jpg,cow\n")
    assert csv_dataset(tmp_path / "train.csv", tmp_path).classes == ["cat", "dog"]
    with pytest.raises(DatasetError) as err:
        csv_dataset(tmp_path / "val.csv", tmp_path, train_list=tmp_path / "train.csv")
    assert str(err.value) == (f"{tmp_path / 'val.csv'}: line 2: class 'cow' is not one of the 2 classes "
                              f"({tmp_path / 'train.csv'})")
    (tmp_path / "names.txt").write_text("cow\ncat\ndog\n")
    val = csv_dataset(tmp_path / "val.csv", tmp_path, categories=tmp_path / "names.txt")
    assert val.classes == ["cow", "cat", "dog"] and val.targets.tolist() == [0]
    (tmp_path / "mixed.csv").write_text("a.jpg,cat\na.jpg,1\n")
    with pytest.raises(DatasetError, match=r"mixed\.csv: line 2: label 1 is an index but other lines name classes"):
        csv_dataset(tmp_path / "mixed.csv", tmp_path)
