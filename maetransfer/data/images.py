"""Reading image and annotation files with errors that name the file."""
import json
import warnings
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Type

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS

from ..errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageReadError(InputError, RuntimeError):
    """An image file is missing, truncated or not an image."""


def read_rgb(path) -> Image.Image:
    """Decode an image fully (a truncated file fails here, not later inside a transform) as RGB."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise ImageReadError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"{path}: corrupt or unreadable image ({' '.join(str(exc).split())})") from None


def list_images(root) -> List[Path]:
    """Every image below `root` (ImageFolder class folders or a flat folder), in a stable order."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: image folder not found")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())
    if not files:
        raise FileNotFoundError(f"{root}: no image files ({', '.join(IMG_EXTENSIONS)}) found")
    return files


class UnlabeledImages(Dataset):
    """Images of a folder tree for self-supervised pretraining (labels, if any, are ignored).

    skip_corrupt=False: an unreadable file stops the run with one line naming it.
    skip_corrupt=True: it is replaced by the next readable image and reported with a warning and a running count.
    """

    def __init__(self, root, transform: Optional[Callable] = None, skip_corrupt: bool = False):
        self.files = list_images(root)
        self.transform = transform
        self.skip_corrupt = skip_corrupt
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        for offset in range(len(self.files)):
            path = self.files[(index + offset) % len(self.files)]
            try:
                image = read_rgb(path)
                break
            except ImageReadError as exc:
                if not self.skip_corrupt:
                    raise
                self.skipped += 1
                warnings.warn(f"{exc}; skipped ({self.skipped} skipped so far in this process)")
        else:
            raise ImageReadError(f"{self.files[0].parent}: no readable image at all")
        return self.transform(image) if self.transform else image


def read_annotation_json(path, lists: Sequence[str] = ("images", "annotations", "categories"),
                         error: Type[Exception] = ValueError) -> dict:
    """A COCO-style annotation file (COCO instances, iNaturalist): a JSON object whose `lists` keys are lists.
    Problems raise `error` (FileNotFoundError when absent) with one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation file not found")
    try:
        with open(path) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path}: not valid JSON ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object with {', '.join(lists)}")
    missing = [k for k in lists if not isinstance(data.get(k), list)]
    if missing:
        raise error(f"{path}: missing list '{missing[0]}' (a COCO-style annotation file has "
                    f"{', '.join(lists)})")
    return data
