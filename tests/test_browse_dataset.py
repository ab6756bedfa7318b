"""tools/browse_dataset.py on tiny generated data sets of each task: the pictures (how many, their size, the ground
truth on them), --augmented at the training transform's output size, problems planted in the data listed in
problems.json and in the printed summary, and bad input as one line with the tools' exit codes."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from PIL import Image

from maetransfer.data.ade import write_demo_ade20k
from maetransfer.data.cls import write_demo_data
from maetransfer.data.coco import write_demo_coco
from tool_modules import load_tool

ROOT = Path(__file__).resolve().parent.parent
MIN_SIDE = 512  # pictures of small images are enlarged by a whole factor to at least this (docs: the drawing module)


@pytest.fixture(scope="module")
def tool():
    return load_tool("browse_dataset")


def _run(tool, config, data, out, *extra):
    return tool.main(["--config", config, "data.demo=false", f"data.root={data}", "--output-dir", str(out), *extra])


def _pictures(out):
    return sorted(p for p in Path(out).iterdir() if p.suffix == ".png")


def _problems(out):
    saved = json.loads((Path(out) / "problems.json").read_text())
    return {entry["kind"]: entry for entry in saved["problems"]}, saved


def _enlarged_side(side: int) -> int:
    """The side at which a `side`-px image is shown: the smallest whole multiple reaching MIN_SIDE."""
    return side * -(-MIN_SIDE // side)


# -- detection ---------------------------------------------------------------------------------------------------------
@pytest.fixture
def coco(tmp_path):
    """The demo COCO set (5 train images of 64 px) with problems planted in the train json: a box wholly outside its
    image, a category without instances, an annotation of a category that does not exist, an image without
    annotations."""
    root = write_demo_coco(tmp_path / "coco", num_train=5, num_val=2, size=64, max_shapes=2)
    path = root / "annotations" / "instances_train2017.json"
    data = json.loads(path.read_text())
    moved = next(a for a in data["annotations"] if a["image_id"] == 2)
    moved["bbox"] = [100.0, 90.0, 10.0, 12.0]
    data["categories"].append({"id": 40, "name": "ghost", "supercategory": "shape"})
    stray = dict(data["annotations"][0], id=999, category_id=77)
    data["annotations"].append(stray)
    (root / "train2017" / "unlabelled.png").write_bytes((root / "train2017" / "000000000001.png").read_bytes())
    data["images"].append({"id": 500, "file_name": "unlabelled.png", "height": 64, "width": 64})
    path.write_text(json.dumps(data))
    return root, data, moved["id"]


def test_detection_draws_the_ground_truth_and_lists_the_planted_problems(tool, coco, tmp_path, capsys):
    root, data, moved_id = coco
    out = tmp_path / "browse"
    _run(tool, "configs/det/demo.yaml", root, out, "-n", "3")
    pictures = _pictures(out)
    assert [p.name for p in pictures] == ["00000_000000000001.png", "00001_000000000002.png",
                                          "00002_000000000003.png"]
    for p in pictures:
        assert Image.open(p).size == (_enlarged_side(64),) * 2

    # the instances of image 1, decoded from the json: their pixels are tinted, the background far from every box is
    # the image itself (enlarged by nearest neighbour)
    picture = np.asarray(Image.open(pictures[0]).convert("RGB")).astype(int)
    image = np.asarray(Image.open(root / "train2017" / "000000000001.png").convert("RGB")).astype(int)
    zoom = picture.shape[0] // 64
    shown = picture[zoom // 2::zoom, zoom // 2::zoom]  # one pixel per image pixel
    anns = [a for a in data["annotations"] if a["image_id"] == 1 and a["id"] != 999]
    assert anns
    masks = [mask_utils.decode(dict(a["segmentation"], counts=a["segmentation"]["counts"].encode())) > 0
             for a in anns]
    inside = np.any(masks, axis=0)
    changed = np.any(shown != image, axis=2)
    assert changed[inside].mean() > 0.9
    near_a_box = np.zeros((64, 64), dtype=bool)
    for a in anns:
        x, y, w, h = a["bbox"]
        near_a_box[max(0, int(y) - 10):int(y + h) + 10, max(0, int(x) - 10):int(x + w) + 10] = True
    assert (~near_a_box).sum() > 100 and not changed[~near_a_box].any()

    found, saved = _problems(out)
    assert saved["images"] == 6 and saved["classes"] == 7 and len(saved["pictures"]) == 3
    assert found["box outside its image"]["count"] == 1
    assert f"annotation id {moved_id} " in found["box outside its image"]["items"][0]
    assert [item for item in found["class with no instance"]["items"] if "'ghost'" in item]
    assert "category_id 77" in found["label out of range"]["items"][0]
    assert [item for item in found["image with no annotation"]["items"] if "unlabelled.png" in item]
    printed = capsys.readouterr().out
    for kind in ("box outside its image", "class with no instance", "label out of range", "image with no annotation"):
        assert f"  {kind}: " in printed
    assert "'ghost'" in printed and "problems.json" in printed


def test_detection_augmented_pictures_have_the_crop_size(tool, coco, tmp_path):
    root, _, _ = coco
    out = tmp_path / "browse"
    # LSJ at scale 1.5 enlarges the 64-px images to 72 px, then crops model.img_size = 48 px
    _run(tool, "configs/det/demo.yaml", root, out, "-n", "2", "--augmented", "model.img_size=48",
         "data.scale_range=[1.5,1.5]")
    pictures = _pictures(out)
    assert [p.name for p in pictures] == ["00000_000000000001_augmented.png", "00001_000000000002_augmented.png"]
    assert {Image.open(p).size for p in pictures} == {(_enlarged_side(48),) * 2}  # 528, not the 512 of 64 px


# -- segmentation ------------------------------------------------------------------------------------------------------
SEG = ["data.class_names=[disc,square,triangle,ring,cross,bar,ghost]", "model.num_classes=7", "data.scale=[256,64]",
       "data.ratio_range=[1.0,1.0]"]


@pytest.fixture
def ade(tmp_path):
    """The demo ADE20K-layout set (5 training images of 64 px, 6 shape classes; 'ghost', a 7th class, never occurs)
    with a label value above the class count in one map, a map with no class pixel and an image without map."""
    root = write_demo_ade20k(tmp_path / "ade", 5, 2, 64)
    labels = root / "annotations" / "training"
    first = np.array(Image.open(labels / "ADE_train_00000001.png"))
    first[:3, :5] = 9  # 1..7 are the classes (reduce_zero_label), 0 ignored
    Image.fromarray(first).save(labels / "ADE_train_00000001.png")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(labels / "ADE_train_00000002.png")
    (labels / "ADE_train_00000003.png").unlink()
    return root


def test_segmentation_pictures_and_planted_problems(tool, ade, tmp_path, capsys):
    out = tmp_path / "browse"
    _run(tool, "configs/seg/demo.yaml", ade, out, "-n", "2", "--workers", "0", *SEG)
    pictures = _pictures(out)
    assert [p.name for p in pictures] == ["00000_ADE_train_00000000.png", "00001_ADE_train_00000001.png"]
    for p in pictures:  # the image with its label map, and a legend to the right
        width, height = Image.open(p).size
        assert height == _enlarged_side(64) and width > height
    found, saved = _problems(out)
    assert saved["images"] == 5 and saved["classes"] == 7
    assert found["label out of range"]["count"] == 1
    out_of_range = found["label out of range"]["items"][0]
    assert "ADE_train_00000001.png" in out_of_range and "9 (15 pixels)" in out_of_range
    no_annotation = found["image with no annotation"]["items"]
    assert len(no_annotation) == 2 and "ADE_train_00000002.png" in " ".join(no_annotation)
    assert "ADE_train_00000003" in " ".join(no_annotation)
    names = ["disc", "square", "triangle", "ring", "cross", "bar", "ghost"]
    present = set()
    for label in (ade / "annotations" / "training").glob("*.png"):
        present |= {int(v) - 1 for v in np.unique(np.array(Image.open(label))) if 1 <= v <= 7}
    assert found["class with no instance"]["items"] == [f"class {c} '{names[c]}'" for c in range(7)
                                                        if c not in present]
    assert 6 not in present
    printed = capsys.readouterr().out
    assert "  label out of range: 1" in printed and "'ghost'" in printed


def test_segmentation_augmented_pictures_have_the_crop_size(tool, ade, tmp_path):
    out = tmp_path / "browse"
    _run(tool, "configs/seg/demo.yaml", ade, out, "-n", "2", "--workers", "0", "--augmented", *SEG,
         "data.crop_size=[48,32]")
    pictures = _pictures(out)
    assert len(pictures) == 2 and all(p.name.endswith("_augmented.png") for p in pictures)
    assert {Image.open(p).height for p in pictures} == {_enlarged_side(48)}  # a 48 x 32 crop of the 64-px images


# -- classification ----------------------------------------------------------------------------------------------------
@pytest.fixture
def cls_data(tmp_path):
    """The demo classification set (iNaturalist json, 8 train images of 32 px) with an annotation naming a category
    that does not exist and a category without images."""
    root = write_demo_data(tmp_path / "cls", n_train=8, n_val=4, size=32, seed=1)
    data = json.loads((root / "train.json").read_text())
    data["annotations"][2]["category_id"] = 99
    data["categories"].append({"id": 6, "name": "ghost", "supercategory": "shape"})
    (root / "train.json").write_text(json.dumps(data))
    return root, data


def test_classification_pictures_and_planted_problems(tool, cls_data, tmp_path, capsys):
    root, data = cls_data
    out = tmp_path / "browse"
    _run(tool, "configs/cls/demo.yaml", root, out, "-n", "4")
    pictures = _pictures(out)
    assert len(pictures) == 4
    assert {Image.open(p).size for p in pictures} == {(_enlarged_side(32),) * 2}
    # the image whose annotation is out of range is not drawn (it has no label): the first 4 of the others
    bad_image = data["annotations"][2]["image_id"]
    drawn = [Path(img["file_name"]).stem for img in data["images"] if img["id"] != bad_image][:4]
    assert [p.name.split("_", 1)[1] for p in pictures] == [f"{stem}.png" for stem in drawn]
    found, saved = _problems(out)
    assert saved["images"] == 8 and saved["classes"] == 7
    assert found["label out of range"]["items"] == [f"train.json: annotation #2 (image id {bad_image}): category_id "
                                                    "99 is not in 'categories'"]
    assert found["class with no instance"]["items"][-1] == "class 6 'ghost'"
    assert f"image id {bad_image} " in found["image with no annotation"]["items"][0]
    assert "  label out of range: 1" in capsys.readouterr().out


def test_classification_list_file_label_out_of_range_and_augmented_size(tool, cls_data, tmp_path):
    root, data = cls_data
    names = [img["file_name"] for img in data["images"]][:4]
    (root / "list.txt").write_text(f"{names[0]} 0\n{names[1]} 1\n{names[2]} 9\n{names[3]} 2\n")
    out = tmp_path / "browse"
    _run(tool, "configs/cls/demo.yaml", root, out, "data.format=places", "data.train_split=list.txt",
         "data.num_classes=6", "--augmented", "model.img_size=24")
    pictures = _pictures(out)
    assert len(pictures) == 3 and {Image.open(p).size for p in pictures} == {(_enlarged_side(24),) * 2}
    found, _ = _problems(out)
    assert found["label out of range"]["items"] == ["list.txt: line 3: label 9 outside [0, 6)"]


# -- bad input ---------------------------------------------------------------------------------------------------------
def test_earlier_pictures_are_kept_without_overwrite(tool, cls_data, tmp_path):
    root, _ = cls_data
    out = tmp_path / "browse"
    _run(tool, "configs/cls/demo.yaml", root, out, "-n", "2")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert len(before) == 3  # 2 pictures and problems.json
    command = [sys.executable, "tools/browse_dataset.py", "--config", "configs/cls/demo.yaml", "--output-dir",
               str(out), "data.demo=false", f"data.root={root}", "-n", "2", "--augmented"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr == (f"error: {out} holds 3 files of an earlier browse, e.g. {sorted(before)[0]}: pass "
                             "--overwrite to replace them, or choose another --output-dir\n")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    _run(tool, "configs/cls/demo.yaml", root, out, "-n", "2", "--augmented", "--overwrite")
    assert len(_pictures(out)) == 4 and json.loads((out / "problems.json").read_text())["augmented"] is True


@pytest.mark.parametrize("config", ["configs/det/demo.yaml", "configs/seg/demo.yaml", "configs/cls/demo.yaml"])
def test_a_wrong_data_root_is_one_line_and_exit_1(tool, config, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _run(tool, config, tmp_path / "nowhere", tmp_path / "browse")
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and str(tmp_path / "nowhere") in err and "\n" not in err
    assert not (tmp_path / "browse").exists()


def test_a_missing_config_or_a_pretraining_recipe_is_exit_2(tool, tmp_path, capsys):
    for config, message in (("nothing.yaml", "nothing.yaml: config file not found"),
                            ("configs/pretrain/demo.yaml", "configs/pretrain/demo.yaml is a pretraining recipe")):
        with pytest.raises(SystemExit) as exit_info:
            tool.main(["--config", config, "--output-dir", str(tmp_path / "browse")])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {message}") and "\n" not in err
