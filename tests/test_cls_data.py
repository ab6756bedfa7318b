"""Classification datasets in their released on-disk formats, read through the shipped configs."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from maetransfer.config import load_config
from maetransfer.data.cls import DatasetError, build_dataset, build_transform, write_demo_data
from maetransfer.data.demo import SHAPES, render_scenes

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "cls"


def _png(path: Path, value: int = 0, size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)


def _cfg(name: str, root: Path, *overrides: str):
    return load_config(CONFIGS / name, [f"data.root={root}", *overrides])


def _inat(root: Path, split_json: str, files, cats, extra_images=(), categories=None) -> None:
    """A COCO-like iNaturalist annotation file: images (id, file_name), annotations, categories."""
    images = [{"id": 100 + i, "file_name": f, "width": 8, "height": 8} for i, f in enumerate(files)]
    anns = [{"id": i, "image_id": 100 + i, "category_id": c} for i, c in enumerate(cats)]
    if categories is None:
        categories = [{"id": c, "name": f"species_{c}", "supercategory": "Plantae"} for c in sorted(set(cats))]
    root.mkdir(parents=True, exist_ok=True)
    (root / split_json).write_text(json.dumps({"images": images + list(extra_images), "annotations": anns,
                                               "categories": categories}))
    for i, f in enumerate(files):
        _png(root / f, value=10 * i)


# The image folders of each release: 2017 by species name, 2018/2019 by numeric category folder.
INAT_LAYOUTS = {
    "inat2017": ("train2017.json", "val2017.json", "train_val_images/Plantae/Xanthium strumarium/{}.jpg"),
    "inat2018": ("train2018.json", "val2018.json", "train_val2018/Plantae/{}/a.jpg"),
    "inat2019": ("train2019.json", "val2019.json", "train_val2019/Plants/{}/a.jpg"),
}


@pytest.mark.parametrize("name", sorted(INAT_LAYOUTS))
def test_inat_years_map_category_ids_to_contiguous_labels(tmp_path, name):
    train_json, val_json, pattern = INAT_LAYOUTS[name]
    cats = [40, 7, 1010, 7]  # non-contiguous ids: labels follow sorted ids 7 -> 0, 40 -> 1, 1010 -> 2
    files = [pattern.format(f"t{i}") for i in range(4)]
    _inat(tmp_path, train_json, files, cats)
    _inat(tmp_path, val_json, [pattern.format("v0"), pattern.format("v1")], [1010, 40],
          categories=[{"id": c, "name": f"species_{c}"} for c in (1010, 40, 7)])
    cfg = _cfg(f"{name}_vit_base.yaml", tmp_path, "data.num_classes=3")
    train = build_dataset(cfg.data, "train", T.ToTensor())
    val = build_dataset(cfg.data, "val")
    assert train.targets.tolist() == [1, 0, 2, 0]
    assert val.targets.tolist() == [2, 1]
    assert train.classes == val.classes == ["species_7", "species_40", "species_1010"]
    image, label = train[2]
    assert label == 2 and image.shape == (3, 8, 8)
    assert torch.allclose(image, torch.full_like(image, 20 / 255))  # the third file written (value 10 * 2)


def test_inat_num_classes_must_match_the_config(tmp_path):
    _inat(tmp_path, "train2018.json", ["a.jpg"], [3])
    cfg = _cfg("inat2018_vit_base.yaml", tmp_path)  # the config says 8142 classes
    with pytest.raises(DatasetError, match=r"train2018\.json: has 1 classes but data.num_classes is 8142"):
        build_dataset(cfg.data, "train")


def test_places365_standard_lists(tmp_path):
    (tmp_path / "categories_places365.txt").write_text("/a/airfield 0\n/a/apartment_building/outdoor 1\n/b/bar 2\n")
    (tmp_path / "places365_train_standard.txt").write_text(
        "/a/airfield/00000001.jpg 0\n/b/bar/00000001.jpg 2\n/a/apartment_building/outdoor/00000001.jpg 1\n")
    (tmp_path / "places365_val.txt").write_text("Places365_val_00000001.jpg 2\nPlaces365_val_00000002.jpg 0\n")
    for rel in ("a/airfield/00000001.jpg", "b/bar/00000001.jpg", "a/apartment_building/outdoor/00000001.jpg"):
        _png(tmp_path / "data_256" / rel)
    for rel in ("Places365_val_00000001.jpg", "Places365_val_00000002.jpg"):
        _png(tmp_path / "val_256" / rel)
    cfg = _cfg("places365_vit_base.yaml", tmp_path, "data.num_classes=3")
    train, val = build_dataset(cfg.data, "train"), build_dataset(cfg.data, "val")
    assert train.targets.tolist() == [0, 2, 1] and val.targets.tolist() == [2, 0]
    assert train.classes == ["airfield", "apartment_building/outdoor", "bar"]
    assert train[1][1] == 2 and val[0][1] == 2 and isinstance(val[1][0], Image.Image)


def test_places205_lists_and_class_names_from_folders(tmp_path):
    split = tmp_path / "trainvalsplit_places205"
    split.mkdir()
    (split / "train_places205.csv").write_text(
        "a/abbey/gsun_01.jpg 0\nb/badlands/gsun_02.jpg 1\na/abbey/gsun_03.jpg 0\n")
    (split / "val_places205.csv").write_text("b/badlands/gsun_04.jpg 1\n")
    images = tmp_path / "data/vision/torralba/deeplearning/images256"
    for rel in ("a/abbey/gsun_01.jpg", "b/badlands/gsun_02.jpg", "a/abbey/gsun_03.jpg", "b/badlands/gsun_04.jpg"):
        _png(images / rel)
    cfg = _cfg("places205_vit_base.yaml", tmp_path, "data.num_classes=2")
    train, val = build_dataset(cfg.data, "train"), build_dataset(cfg.data, "val")
    assert train.targets.tolist() == [0, 1, 0] and val.targets.tolist() == [1]
    assert train.classes == ["abbey", "badlands"]
    assert train[2][1] == 0 and val[0][1] == 1


def test_imagefolder_labels_follow_sorted_class_folders(tmp_path):
    for split in ("train", "val"):
        for wnid in ("n02", "n01"):
            _png(tmp_path / split / wnid / f"{wnid}_0.JPEG")
    cfg = _cfg("imagenet_vit_base.yaml", tmp_path, "data.num_classes=2")
    val = build_dataset(cfg.data, "val")
    assert val.classes == ["n01", "n02"] and val.targets.tolist() == [0, 1]
    assert [val.path(i) for i in range(len(val))] == ["n01/n01_0.JPEG", "n02/n02_0.JPEG"]


def test_places_lists_are_held_as_arrays_and_give_the_listed_samples(tmp_path):
    """Paths, labels and line numbers live in numpy arrays (no Python object per image, so forked workers share
    them); every index still yields the image and label of its line, non-ASCII folder names included."""
    split = tmp_path / "trainvalsplit_places205"
    split.mkdir()
    rng = np.random.default_rng(0)
    folders = ["a/abbey", "b/badlands", "c/caf\u00e9/int\u00e9rieur"]
    lines = [(f"{folders[k]}/gsun_{i:04d}.jpg", int(k)) for i, k in enumerate(rng.integers(0, 3, 40))]
    (split / "train_places205.csv").write_text("".join(f"{p} {k}\n" for p, k in lines), encoding="utf-8")
    (split / "val_places205.csv").write_text(f"{lines[0][0]} {lines[0][1]}\n")
    images = tmp_path / "data/vision/torralba/deeplearning/images256"
    for i, (rel, _) in enumerate(lines):
        _png(images / rel, value=5 * i)
    cfg = _cfg("places205_vit_base.yaml", tmp_path, "data.num_classes=3")
    train = build_dataset(cfg.data, "train", T.PILToTensor())
    assert isinstance(train.paths, np.ndarray) and train.paths.dtype.kind == "S"
    assert isinstance(train.entries, np.ndarray) and train.entries.dtype.kind == "i"
    assert train.classes == ["abbey", "badlands", "caf\u00e9/int\u00e9rieur"]
    for i, (rel, label) in enumerate(lines):
        image, target = train[i]
        assert train.path(i) == rel and target == label and int(image[0, 0, 0]) == 5 * i
        assert train.where(i).endswith(f"train_places205.csv: line {i + 1}")


# -- bad input: one line naming the file and the entry ----------------------------------------------------------------
def _places_cfg(tmp_path, train_lines: str):
    (tmp_path / "places365_train_standard.txt").write_text(train_lines)
    return _cfg("places365_vit_base.yaml", tmp_path, "data.num_classes=3", "data.categories=")


def test_missing_image_names_list_file_line_and_path(tmp_path):
    cfg = _places_cfg(tmp_path, "/a/airfield/1.jpg 0\n/a/airfield/2.jpg 1\n")
    _png(tmp_path / "data_256/a/airfield/1.jpg")
    with pytest.raises(FileNotFoundError) as err:  # checked when the dataset is built
        build_dataset(cfg.data, "train")
    msg = str(err.value)
    assert "\n" not in msg and "places365_train_standard.txt: line 2" in msg
    assert "data_256/a/airfield/2.jpg" in msg and "not found" in msg

    _png(tmp_path / "data_256/a/airfield/2.jpg")
    ds = build_dataset(cfg.data, "train")
    (tmp_path / "data_256/a/airfield/2.jpg").unlink()  # gone after the check: named when read
    with pytest.raises(DatasetError) as err:
        ds[1]
    msg = str(err.value)
    assert "\n" not in msg and "places365_train_standard.txt: line 2" in msg
    assert "data_256/a/airfield/2.jpg" in msg and "not found" in msg


def test_corrupt_image_names_the_file(tmp_path):
    cfg = _places_cfg(tmp_path, "/a/airfield/1.jpg 0\n")
    bad = tmp_path / "data_256/a/airfield/1.jpg"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(DatasetError, match=r"places365_train_standard\.txt: line 1: .*1\.jpg") as err:
        build_dataset(cfg.data, "train")[0]
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("line, expected", [
    ("/a/airfield/1.jpg 3\n", r"places365_train_standard\.txt: line 1: label 3 out of range \[0, 3\)"),
    ("/a/airfield/1.jpg\n", r"places365_train_standard\.txt: line 1: expected 'image_path label'"),
    ("/a/airfield/1.jpg zero\n", r"places365_train_standard\.txt: line 1: expected 'image_path label'"),
])
def test_bad_list_entries(tmp_path, line, expected):
    cfg = _places_cfg(tmp_path, line)
    with pytest.raises(DatasetError, match=expected):
        build_dataset(cfg.data, "train")


def test_inat_category_out_of_range_names_the_annotation(tmp_path):
    _inat(tmp_path, "train2019.json", ["a.jpg", "b.jpg"], [1, 9], categories=[{"id": 1, "name": "x"}])
    cfg = _cfg("inat2019_vit_base.yaml", tmp_path, "data.num_classes=null")
    with pytest.raises(DatasetError, match=r"train2019\.json: annotation #1 \(image id 101\) has category_id 9"):
        build_dataset(cfg.data, "train")


@pytest.mark.parametrize("content, expected", [
    ('{"images": [', r"train2017\.json: not valid JSON"),
    ('{"images": [], "annotations": []}', r"train2017\.json: missing list 'categories'"),
    ('[1, 2]', r"train2017\.json: expected a JSON object"),
    ('{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [], "categories": [{"id": 0}]}',
     r"train2017\.json: image id 1 \(a\.jpg\) has no annotation"),
])
def test_malformed_inat_json(tmp_path, content, expected):
    (tmp_path / "train2017.json").write_text(content)
    cfg = _cfg("inat2017_vit_base.yaml", tmp_path, "data.num_classes=null")
    with pytest.raises(DatasetError, match=expected) as err:
        build_dataset(cfg.data, "train")
    assert "\n" not in str(err.value)


def test_missing_index_file_is_named(tmp_path):
    cfg = _cfg("inat2018_vit_base.yaml", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"train2018\.json: annotation file not found"):
        build_dataset(cfg.data, "train")


# -- transforms -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size, resize", [(224, 256), (448, 448)])
def test_eval_transform_is_the_official_resize_and_center_crop(size, resize):
    """Official util/datasets.py: Resize(int(size / crop_pct), bicubic) with crop_pct 224/256 up to 224, else 1.0."""
    cfg = load_config(CONFIGS / "imagenet_vit_base.yaml", [f"model.img_size={size}"])
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 500, 3), dtype=np.uint8))
    reference = T.Compose([T.Resize(resize, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size),
                           T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    assert torch.equal(build_transform(cfg, is_train=False)(image), reference(image))


def test_train_transforms_follow_the_recipes():
    finetune = repr(build_transform(load_config(CONFIGS / "imagenet_vit_base.yaml"), is_train=True))
    assert "RandAugment" in finetune and "m=9, mstd=0.5" in finetune and "interpolation=bicubic" in finetune
    assert "RandomErasing(p=0.25, mode=pixel" in finetune
    linear = repr(build_transform(load_config(CONFIGS / "imagenet_linprobe_vit_base.yaml"), is_train=True))
    assert "RandomResizedCrop" in linear and "RandomHorizontalFlip" in linear
    assert "RandAugment" not in linear and "RandomErasing" not in linear and "ColorJitter" not in linear


def test_demo_data_is_one_large_shape_per_image_labelled_with_its_kind(tmp_path):
    root = write_demo_data(tmp_path / "demo", n_train=6, n_val=3, size=32, seed=3)
    cfg = load_config(CONFIGS / "demo.yaml", [f"data.root={root}"])
    train, val = build_dataset(cfg.data, "train"), build_dataset(cfg.data, "val")
    assert (len(train), len(val)) == (6, 3) and train.classes == list(SHAPES)
    scenes = list(render_scenes(9, size=32, seed=3, max_shapes=1, radius=(0.25, 0.45)))
    for i, (image, instances) in enumerate(scenes):
        assert len(instances) == 1 and instances[0].mask.sum() >= 0.05 * 32 * 32  # object-centric, many patches
        ds, j = (train, i) if i < 6 else (val, i - 6)
        assert ds.targets[j] == instances[0].category
        assert np.array_equal(np.asarray(ds[j][0]), image)  # PNG: lossless


def test_randaugment_posterize_to_zero_bits_gives_a_black_image():
    """rand-m9-mstd0.5-inc1 reaches magnitude 10 = keep 0 bits; old Pillow gave black (value & 0), new Pillow raises."""
    from timm.data.auto_augment import AugmentOp
    image = Image.fromarray(np.random.default_rng(0).integers(1, 255, (16, 16, 3), dtype=np.uint8))
    out = AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10, hparams={})(image)
    assert out.size == image.size and out.mode == "RGB" and not np.asarray(out).any()
    kept = AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=5, hparams={})(image)  # 2 bits: value & 0b11000000
    assert np.array_equal(np.asarray(kept), np.asarray(image) & 0xC0)
