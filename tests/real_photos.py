"""Real photographs that installed packages ship (scikit-image's data module, matplotlib's sample data), cut and
scaled into an ADE20K-layout validation set of several sizes and aspect ratios, panoramas included: the inputs of
the segmentation tests against OpenCV and mmseg. Nothing is downloaded."""
import importlib.util
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
from PIL import Image

# name: (package, file, crop box (left, top, right, bottom) or None, scale of the crop). Sizes (h x w) written:
PHOTOS = {
    "hopper": ("matplotlib", "grace_hopper.jpg", None, 1.0),             # 600 x 512, portrait
    "astronaut": ("skimage", "astronaut.png", None, 1.0),                # 512 x 512
    "cat": ("skimage", "chelsea.png", None, 1.0),                        # 300 x 451
    "cat_small": ("skimage", "chelsea.png", None, 0.25),                 # 75 x 113: enlarged by the test resize
    "coffee_pano": ("skimage", "coffee.png", (0, 80, 600, 320), 1.0),    # 240 x 600, 2.5:1 panorama
    "street_pano": ("skimage", "motorcycle_left.png", (0, 160, 741, 346), 1.0),  # 186 x 741, 4:1 panorama
    "rocket_tall": ("skimage", "rocket.jpg", (200, 0, 370, 427), 1.5),   # 640 x 255, tall 2.5:1
    "hubble": ("skimage", "hubble_deep_field.jpg", None, 0.5),           # 436 x 500
}


def package_file(package: str, name: str) -> Path:
    """A data file inside an installed package, found without importing the package (skipped where it is absent)."""
    spec = importlib.util.find_spec(package)
    if spec is None:
        pytest.skip(f"{package} is not installed (its sample photos are test inputs)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    path = folder / ("data" if package == "skimage" else "mpl-data/sample_data") / name
    if not path.is_file():
        pytest.skip(f"{path} not found in the installed {package}")
    return path


def photo(name: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB of PHOTOS[name]."""
    package, file, box, scale = PHOTOS[name]
    with Image.open(package_file(package, file)) as im:
        im = im.convert("RGB")
        im = im.crop(box) if box else im
        if scale != 1.0:
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.BICUBIC)
        return np.asarray(im).copy()


def write_photo_set(root: Path, split: str = "validation") -> Dict[str, Path]:
    """Every photo of PHOTOS as `root/images/<split>/<name>.jpg` (JPEG, so that decoding is part of what is compared)
    with a label map `root/annotations/<split>/<name>.png` (grey level quantised to 0..150; 0 is ignored); returns
    {name: image path}."""
    images, labels = root / "images" / split, root / "annotations" / split
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in PHOTOS:
        rgb = photo(name)
        Image.fromarray(rgb).save(images / f"{name}.jpg", quality=90)
        grey = rgb.astype(np.int64) @ np.array([299, 587, 114]) // 1000
        Image.fromarray((grey * 151 // 256).astype(np.uint8)).save(labels / f"{name}.png")
        written[name] = images / f"{name}.jpg"
    return written
