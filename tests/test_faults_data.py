"""Bad datasets as a user meets them: each is found when the dataset is built (before training writes anything) and
ends the tool with one line naming the file, the entry and the problem (exit 1); an earlier run's files in the
output folder stay byte-identical. Annotation problems that detectron2 tolerates are counted in one warning line.
Errors raised in DataLoader workers come back as the same class with the worker's traceback in the message."""
import json
import os
import re
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch._utils import ExceptionWrapper

from maetransfer.data.ade import ADE20KDataset, write_demo_ade20k
from maetransfer.data.cls import DatasetError, image_folder_dataset, inat_dataset, write_demo_data
from maetransfer.data.coco import CocoDetection, CocoFormatError, write_demo_coco
from maetransfer.data.images import IMG_EXTENSIONS, ImageReadError, MissingFileError
from maetransfer.errors import InputError
from test_det_model import TINY as DET_TINY
from tool_modules import load_tool

ROOT = Path(__file__).resolve().parent.parent
SEG_TINY = ["model.arch=vit_micro", "model.patch_size=8", "model.img_size=64", "model.channels=16",
            "model.aux_channels=8", "data.scale=[256,64]", "data.crop_size=[64,64]", "eval.crop_size=[64,64]",
            "train.max_iters=2", "train.batch_size=2", "train.num_workers=0"]
CLS_TINY = ["model.arch=vit_micro", "model.patch_size=8", "model.embed_dim=32", "model.depth=2", "model.num_heads=2",
            "model.img_size=32", "train.epochs=1", "train.batch_size=4", "train.num_workers=0"]


def _tool(name: str):
    return load_tool(name)


@pytest.fixture(scope="module")
def tools():
    return {name: _tool(name) for name in ("train_det", "train_seg", "train_cls", "pretrain_mae")}


def _one_line_error(tool, argv, capsys) -> str:
    """Run a tool that must fail on its input: exit 1 and exactly one line on stderr, returned."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        tool.main(argv)
    assert exit_info.value.code == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def _nothing_written(out: Path) -> None:
    assert not out.exists() or not any(out.iterdir()), sorted(out.iterdir())


def _det(data, out, *extra):
    return ["--output-dir", str(out), f"data.root={data}", "data.demo=false", "train.init_checkpoint=",
            "train.max_iters=1", "train.batch_size=1", "train.num_workers=0", *DET_TINY, *extra]


def _seg(data, out, *extra):
    return ["--output-dir", str(out), f"data.root={data}", "data.demo=false", "train.init_checkpoint=", *SEG_TINY,
            *extra]


def _cls(data, out, *extra):
    return ["--config", str(ROOT / "configs/cls/demo.yaml"), "--output-dir", str(out), f"data.root={data}",
            "data.demo=false", "train.init_checkpoint=", *CLS_TINY, *extra]


# -- COCO -------------------------------------------------------------------------------------------------------------
def test_missing_coco_image_stops_before_training_and_keeps_an_earlier_runs_files(tools, tmp_path, capsys):
    data = write_demo_coco(tmp_path / "coco", num_train=3, num_val=1, size=32, max_shapes=1)
    missing = data / "train2017" / "000000000002.png"
    missing.unlink()
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("train:\n  lr: 0.1\n")  # an earlier run's files, without a checkpoint
    (out / "notes.txt").write_bytes(b"\x00\x01 earlier run\n")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    line = _one_line_error(tools["train_det"], _det(data, out), capsys)
    ann = data / "annotations" / "instances_train2017.json"
    assert re.fullmatch(rf"error: {re.escape(str(ann))}: 1 of the \d images used are missing, first "
                        rf"{re.escape(str(missing))}", line)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing added, nothing changed


def _coco_json(root: Path, name: str, annotations, num_images: int = 2, size: int = 32) -> Path:
    """`num_images` size x size PNGs under root/images and a json with two categories (1, 2)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(1, num_images + 1):
        Image.fromarray(np.full((size, size, 3), 40 * i, np.uint8)).save(root / "images" / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "height": size, "width": size})
    anns = [{"id": n + 1, "iscrowd": 0, "category_id": 1, **a} for n, a in enumerate(annotations)]
    path = root / name
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}))
    return path


SQUARE = [[4.0, 4.0, 20.0, 4.0, 20.0, 20.0, 4.0, 20.0]]


def test_coco_annotations_that_give_no_instance_are_counted_in_one_warning(tmp_path, capsys):
    ann_file = _coco_json(tmp_path, "instances.json", [
        {"image_id": 1, "bbox": [4, 4, 16, 16], "segmentation": SQUARE},                      # kept
        {"image_id": 1, "bbox": [100, 4, 16, 16], "segmentation": SQUARE},                    # kept, box outside
        {"image_id": 1, "bbox": [20, 4, -16, 16], "segmentation": SQUARE},                    # negative width
        {"image_id": 1, "bbox": [4, 4, 16, 16], "segmentation": [[4.0, 4.0, 20.0, 4.0]]},     # 2-point polygon
        {"image_id": 2, "bbox": [4, 4, 16, 16], "segmentation": {"size": [8, 8], "counts": [64]}},  # RLE of 8x8
        {"image_id": 2, "bbox": [4, 4, 16, 16]},                                               # no segmentation
        {"image_id": 2, "bbox": [4, 4, 16], "segmentation": SQUARE},                          # 3-number box
        {"image_id": 2, "bbox": [4, 4, 16, 16], "segmentation": SQUARE, "iscrowd": 1},        # crowd: not counted
    ])
    capsys.readouterr()
    ds = CocoDetection(tmp_path / "images", ann_file, filter_empty=True)
    assert capsys.readouterr().err == (
        f"warning: {ann_file}: 5 of 7 non-crowd annotations give no training instance (1 bbox is not 4 numbers, "
        "1 box width or height <= 0, 1 no polygon of 3 or more points, 1 no segmentation, 1 segmentation neither a "
        "polygon list nor an RLE of the image's size); 1 boxes lie wholly outside their image (kept: training boxes "
        "come from the masks)\n")
    assert ds.ids == [1]  # image 2 keeps no instance
    target = ds.load_target(1)
    assert target["boxes"].tolist() == [[4, 4, 20, 20], [100, 4, 116, 20]]
    assert target["labels"].tolist() == [0, 0]
    # evaluation keeps every image; an image without instances gives an empty target, not an error
    assert CocoDetection(tmp_path / "images", ann_file).load_target(2)["boxes"].shape == (0, 4)


def test_coco_polygon_of_strings_is_named_when_read(tmp_path):
    ann_file = _coco_json(tmp_path, "instances.json", [
        {"image_id": 1, "bbox": [4, 4, 16, 16], "segmentation": [["4", "4", "20", "4", "20", "x"]]}], num_images=1)
    ds = CocoDetection(tmp_path / "images", ann_file)
    with pytest.raises(CocoFormatError) as err:
        ds[0]
    assert str(err.value) == f"{ann_file}: annotation id 1 (image 1.png) has a polygon that is not a list of numbers"


def test_coco_training_set_left_empty_names_why(tools, tmp_path, capsys):
    val = _coco_json(tmp_path / "coco", "val.json", [{"image_id": 1, "bbox": [4, 4, 16, 16], "segmentation": SQUARE}])
    train = _coco_json(tmp_path / "coco", "train.json", [
        {"image_id": 1, "bbox": [20, 4, -16, 16], "segmentation": SQUARE},
        {"image_id": 2, "bbox": [4, 4, 16, 16], "segmentation": [[4.0, 4.0, 20.0, 4.0]]}])
    (tmp_path / "coco" / "annotations").mkdir()
    val.rename(tmp_path / "coco" / "annotations" / "instances_val2017.json")
    train = train.rename(tmp_path / "coco" / "annotations" / "instances_train2017.json")
    (tmp_path / "coco" / "images").rename(tmp_path / "coco" / "train2017")
    (tmp_path / "coco" / "val2017").symlink_to(tmp_path / "coco" / "train2017")
    out = tmp_path / "run"
    line = _one_line_error(tools["train_det"], _det(tmp_path / "coco", out), capsys)
    assert line == (f"error: {train}: no training image left: 2 of 2 non-crowd annotations give no training instance "
                    "(1 box width or height <= 0, 1 no polygon of 3 or more points), and filter_empty "
                    "(data.filter_empty) leaves out images without a usable instance")
    _nothing_written(out)


@pytest.mark.parametrize("annotations, why", [
    ([], "it has no annotations"),
    ([{"image_id": 1, "bbox": [4, 4, 16, 16], "segmentation": SQUARE, "iscrowd": 1}],
     "its 1 annotations are all crowd regions"),
])
def test_coco_empty_training_set_reasons(tmp_path, annotations, why):
    ann_file = _coco_json(tmp_path, "train.json", annotations, num_images=1)
    with pytest.raises(CocoFormatError) as err:
        CocoDetection(tmp_path / "images", ann_file, filter_empty=True)
    assert str(err.value) == (f"{ann_file}: no training image left: {why}, and filter_empty (data.filter_empty) "
                              "leaves out images without a usable instance")
    no_images = tmp_path / "none.json"
    no_images.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    with pytest.raises(CocoFormatError, match=f"^{re.escape(str(no_images))}: lists no images$"):
        CocoDetection(tmp_path / "images", no_images)


# -- ADE20K -----------------------------------------------------------------------------------------------------------
@pytest.fixture
def ade(tmp_path):
    return write_demo_ade20k(tmp_path / "ade", n_train=3, n_val=2, size=32)


@pytest.mark.parametrize("removed, expected", [
    ("annotations/training/ADE_train_00000001.png",  # an image without its label PNG
     "error: {ade}/annotations/training: 1 of the 3 images in {ade}/images/training have no label PNG, first "
     "ADE_train_00000001.jpg (expected ADE_train_00000001.png)"),
    ("images/validation/ADE_val_00000000.jpg",  # a label PNG without its image
     "error: {ade}/images/validation: 1 label PNGs in {ade}/annotations/validation have no image, first "
     "ADE_val_00000000.png (expected ADE_val_00000000.jpg)"),
], ids=["image_without_label", "label_without_image"])
def test_ade_unpaired_file_stops_before_training(tools, ade, tmp_path, capsys, removed, expected):
    (ade / removed).unlink()
    out = tmp_path / "run"
    assert _one_line_error(tools["train_seg"], _seg(ade, out), capsys) == expected.format(ade=ade)
    _nothing_written(out)


def test_ade_label_value_out_of_range_stops_before_training(tools, ade, tmp_path, capsys):
    label = ade / "annotations" / "training" / "ADE_train_00000000.png"
    Image.fromarray(np.full((32, 32), 200, np.uint8)).save(label)
    out = tmp_path / "run"
    line = _one_line_error(tools["train_seg"], _seg(ade, out), capsys)
    assert re.fullmatch(rf"error: {re.escape(str(label))}: label value 200 is outside 0\.\.\d+ \(1024 pixels\)", line)
    _nothing_written(out)


@pytest.mark.parametrize("bad_label, problem", [
    (np.full((32, 32), 300, np.uint16), "label PNG must be single-channel 8-bit (mode L or P), got mode I;16"),
    (np.zeros((32, 32, 3), np.uint8), "label PNG must be single-channel 8-bit (mode L or P), got mode RGB"),
    (np.zeros((16, 32), np.uint8), "label size (16, 32) differs from image size (32, 32) of ADE_train_{}.jpg"),
])
def test_ade_bad_label_png_is_named_when_built_or_when_read(tools, ade, tmp_path, capsys, bad_label, problem):
    labels = ade / "annotations" / "training"
    Image.fromarray(bad_label).save(labels / "ADE_train_00000002.png")
    ds = ADE20KDataset(ade, "training", num_classes=6)  # the first pair is fine: the others are checked when read
    with pytest.raises(DatasetError) as err:
        ds[2]
    assert str(err.value) == f"{labels / 'ADE_train_00000002.png'}: {problem.format('00000002')}"
    Image.fromarray(bad_label).save(labels / "ADE_train_00000000.png")  # a whole set converted wrongly
    out = tmp_path / "run"
    line = _one_line_error(tools["train_seg"], _seg(ade, out), capsys)  # the first pair is read in full when built
    assert line == f"error: {labels / 'ADE_train_00000000.png'}: {problem.format('00000000')}"
    _nothing_written(out)


def test_ade_empty_image_folder_says_so(tmp_path):
    for d in ("images/training", "annotations/training"):
        (tmp_path / d).mkdir(parents=True)
    with pytest.raises(DatasetError) as err:
        ADE20KDataset(tmp_path, "training")
    assert str(err.value) == f"{tmp_path / 'images' / 'training'}: no .jpg images (it is empty)"
    (tmp_path / "images" / "training" / "a.png").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"training: no \.jpg images \(it holds 1 other files, e.g. a\.png\)$"):
        ADE20KDataset(tmp_path, "training")


# -- classification ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def inat(tmp_path_factory):
    return write_demo_data(tmp_path_factory.mktemp("cls") / "data", n_train=8, n_val=4, size=32, seed=3)


def test_inat_missing_image_names_the_entry_before_training(tools, inat, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train.json", "val.json"):
        (data / name).write_bytes((inat / name).read_bytes())
    (data / "images").symlink_to(inat / "images")
    entries = json.loads((inat / "train.json").read_text())["images"]
    gone = entries[3]  # a file_name the json lists but the folder lacks
    (data / "train.json").write_text(json.dumps({**json.loads((inat / "train.json").read_text()), "images": [
        *entries[:3], {**gone, "file_name": gone["file_name"].replace(".png", "_lost.png")}, *entries[4:]]}))
    out = tmp_path / "run"
    line = _one_line_error(tools["train_cls"], _cls(data, out), capsys)
    lost = data / gone["file_name"].replace(".png", "_lost.png")
    assert line == (f"error: {data / 'train.json'}: image id {gone['id']}: image {lost} not found (1 of the 8 listed "
                    "images are missing)")
    _nothing_written(out)


def test_inat_json_without_images_is_empty(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    with pytest.raises(DatasetError, match=f"^{re.escape(str(path))}: lists no images$"):
        inat_dataset(path, tmp_path)


def test_image_folder_without_class_folders_or_images(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "loose.jpg").write_bytes(b"")
    with pytest.raises(DatasetError) as err:
        image_folder_dataset(tmp_path / "train")
    assert str(err.value) == (f"{tmp_path / 'train'}: no class sub-folders (the ImageFolder layout has one folder of "
                              "images per class)")
    (tmp_path / "train" / "cat").mkdir()
    with pytest.raises(DatasetError, match=r"^.*train: Found no valid file for the classes cat\."):
        image_folder_dataset(tmp_path / "train")


# -- pretraining --------------------------------------------------------------------------------------------------------
def test_pretraining_folder_without_images_names_the_extensions(tools, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    pretrain_args = ["--config", str(ROOT / "configs/pretrain/demo.yaml"), f"data.root={folder}", "train.epochs=1",
                     "train.num_workers=0"]
    out = tmp_path / "run"
    line = _one_line_error(tools["pretrain_mae"], [*pretrain_args, "--output-dir", str(out)], capsys)
    assert line == f"error: {folder}: no image files with the extensions {' '.join(IMG_EXTENSIONS)} found (it is empty)"
    (folder / "notes.txt").write_text("not an image")
    line = _one_line_error(tools["pretrain_mae"], [*pretrain_args, "--output-dir", str(out)], capsys)
    assert line.endswith("found (it holds 1 other files, e.g. notes.txt)")
    line = _one_line_error(tools["pretrain_mae"], [*pretrain_args, f"data.root={tmp_path / 'nowhere'}",
                                               "--output-dir", str(out)], capsys)
    assert line == f"error: {tmp_path / 'nowhere'}: image folder not found (set data.root= to the data set's folder)"
    _nothing_written(out)


# -- errors raised in DataLoader workers --------------------------------------------------------------------------------
@pytest.mark.parametrize("error", [DatasetError, MissingFileError, ImageReadError, CocoFormatError])
def test_data_errors_are_input_errors_that_torch_can_re_create(error):
    try:
        raise error("data.json: image id 3: something is wrong")
    except error:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(error) as err:
        wrapped.reraise()  # what the DataLoader does in the main process: exc_type(message)
    assert isinstance(err.value, InputError)
    assert str(err.value).startswith(f"Caught {error.__name__} in DataLoader worker process 0.")
    last = str(err.value).rstrip().splitlines()[-1]
    assert last == f"{error.__module__}.{error.__qualname__}: data.json: image id 3: something is wrong"


def test_label_broken_after_the_check_fails_in_a_worker_as_the_same_class(ade):
    ds = ADE20KDataset(ade, "training", num_classes=6)
    label = ade / "annotations" / "training" / "ADE_train_00000001.png"
    label.unlink()
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, [1]), num_workers=1,
                                         collate_fn=lambda batch: batch)
    with pytest.raises(MissingFileError) as err:
        next(iter(loader))
    assert str(err.value).rstrip().endswith(f"MissingFileError: {label}: label file not found")
    assert "".join(traceback.format_exception_only(err.value)).startswith("maetransfer.data.images.MissingFileError")


# -- demo sets: never half-written, never written twice -----------------------------------------------------------------
@pytest.mark.parametrize("write, files", [
    (lambda root: write_demo_ade20k(root, n_train=2, n_val=1, size=32), 6),  # 3 images + 3 label PNGs
    (lambda root: write_demo_data(root, n_train=2, n_val=1, size=32), 5),  # 3 images + train.json, val.json
])
def test_demo_sets_are_published_whole(write, files, tmp_path, monkeypatch):
    import maetransfer.data.cls as cls_data
    import maetransfer.data.demo as demo

    root = tmp_path / "set"
    real = demo.render_scenes

    def interrupted(*args, **kwargs):  # the writer is killed after its first scene
        yield next(real(*args, **kwargs))
        raise KeyboardInterrupt

    for module in (demo, cls_data):
        monkeypatch.setattr(module, "render_scenes", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write(root)
    assert not root.exists() and [p.name for p in tmp_path.iterdir()] == [f".set.tmp{os.getpid()}"]
    monkeypatch.undo()
    first = {p.relative_to(root): p.read_bytes() for p in write(root).rglob("*") if p.is_file()}
    assert len(first) == files
    # A second writer that finishes after the first (two demos started together) keeps the published set
    assert {p.relative_to(root): p.read_bytes() for p in write(root).rglob("*") if p.is_file()} == first
    assert [p.name for p in tmp_path.iterdir()] == ["set"]  # no temporary folder left by a complete writer
