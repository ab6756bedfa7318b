"""What the three task predictors share: the predictor of the task a config declares, the device, reading a checkpoint once for
its class count and names, images in any form, the class names a model's labels stand for, and the files a run of
tools/predict.py writes."""
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Type, Union

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image

from ..checkpoint import CheckpointError, StateDict, read_raw, unwrap_state
from ..config import ConfigError, load_config
from ..data.images import print_warning, read_image_pil
from ..engine.amp import AMP_DTYPES, autocast
from ..errors import InputError
from ..export.runtime import check_config, is_exported, open_exported
from ..tasks import TASK_NAMES, declared_task, task_spec
from ..zoo import resolve

ImageLike = Union[str, Path, Image.Image, np.ndarray, torch.Tensor]


class ClassNamesError(InputError, ValueError):
    """A class-names file that cannot be read or does not name every class of the model."""


def task_of(cfg: DictConfig, source: str = "config") -> str:
    """The name of the task that `cfg` declares ('det', 'seg' or 'cls'), one with a predictor."""
    spec = declared_task(cfg, source)
    if not spec.predictor:
        raise ConfigError(f"{source}: a {spec.noun} recipe; only a detection, segmentation or classification model "
                          "predicts")
    return spec.name


def predictor_class(task: str) -> Type["Predictor"]:
    """The Predictor of `task` (the task table's)."""
    return task_spec(task).load("predictor")


def checkpoint_task(state: StateDict) -> Optional[str]:
    """The task whose model a state dict holds, by the heads in it (Mask R-CNN RoI heads, a UperNet decode head, a
    classification head); None for an encoder."""
    if any(k.startswith("roi_heads.") for k in state):
        return "det"
    if any(k.startswith("decode_head.") for k in state):
        return "seg"
    if "head.weight" in state or "head.1.weight" in state:
        return "cls"
    return None


def pick_device(name: str) -> torch.device:
    """'auto' (the GPU when there is one), 'cpu', 'cuda' or 'cuda:N'."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name}: not a device (auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is available here (use --device cpu)")
    return device


def to_image(image: ImageLike, read: Callable[[Path], torch.Tensor] = read_image_pil) -> torch.Tensor:
    """uint8 (3, H, W) RGB from a file path (decoded by `read`: a task reads photos as its reference stack does, EXIF
    orientation applied), a PIL image, an (H, W, 3) or (H, W) uint8 array, or a (3, H, W) uint8 tensor."""
    if isinstance(image, (str, Path)):
        return read(Path(image))
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
            raise ValueError(f"expected an (H, W, 3) or (H, W) uint8 array, got {image.dtype} {image.shape}")
        image = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image
        return torch.tensor(image).permute(2, 0, 1)  # a copy: the caller's array stays theirs
    if isinstance(image, torch.Tensor) and image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == 3:
        return image
    raise ValueError("expected an image path, a PIL image, a uint8 array or a uint8 (3, H, W) tensor")


def read_class_names(path) -> List[str]:
    """One class name per line (blank lines skipped)."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ClassNamesError(f"{path}: cannot read the class names ({' '.join(str(exc).split())})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


class Predictor(ABC):
    """A trained model with the evaluation's test pipeline, for images of one's own. Build one with `from_config`;
    `predictor(image)` predicts one image (path, PIL image, array or tensor), `predictor.predict(images)` several in
    one batch, `predictor.draw(image, prediction)` the picture of a prediction. `class_names[label]` names a label.

    `meta`: what the checkpoint says about its model (this project's training writes the class names there).
    Subclasses (one per task) set `task` and implement `load`, `model_class_names`, `predict_tensors`, `draw` and,
    for tools/predict.py, `save` / `save_summary`."""

    task = ""
    summary_files: Sequence[str] = ()
    read_image = staticmethod(read_image_pil)  # how image files are decoded: Pillow, as detectron2 and timm do

    def __init__(self, cfg: DictConfig, model: torch.nn.Module, class_names: Sequence[str], device: str = "auto",
                 amp: str = "none", meta: Optional[Dict] = None):
        if amp not in AMP_DTYPES:
            raise ConfigError(f"amp {amp!r}: expected one of {', '.join(AMP_DTYPES)}")
        self.cfg, self.class_names, self.amp, self.meta = cfg, list(class_names), amp, dict(meta or {})
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()

    @classmethod
    def from_config(cls, config: Union[str, Path, DictConfig], checkpoint: str, device: str = "auto",
                    amp: str = "none", class_names: Union[None, str, Path, Sequence[str]] = None,
                    unsafe: bool = False, **options) -> "Predictor":
        """The predictor of the task that `config` (a path or a loaded config) describes, with the trained model in
        `checkpoint`: anything the task's --eval-only takes (a file, a released name, a hub id). `class_names` (a
        list or a file of one name per line) replaces the names the checkpoint carries; `options` go to the task's
        predictor (det: score_thresh, seg: opacity, cls: topk)."""
        cfg = config if isinstance(config, DictConfig) else load_config(config)
        task = task_of(cfg, "config" if isinstance(config, DictConfig) else str(config))
        predictor = predictor_class(task)
        if cls is not Predictor and cls is not predictor:
            raise ConfigError(f"{config}: a {TASK_NAMES[task]} recipe, not one for {cls.__name__}")
        path = str(resolve(checkpoint, unsafe))
        if is_exported(path):
            return predictor.from_exported(cfg, path, device, amp, class_names, **options)
        # Mapped, not read: the class count and the names this project's checkpoints carry cost nothing to look at.
        obj, _ = read_raw(path, unsafe, mmap=True)
        held = checkpoint_task(unwrap_state(obj, path)[0])
        if held not in (None, task):
            raise CheckpointError(f"{path}: a {TASK_NAMES[held]} model, but the config is a {TASK_NAMES[task]} "
                                  "recipe")
        meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else {}
        model, num_classes = predictor.load(cfg, path, obj, meta, unsafe)
        names = predictor.class_names_for(cfg, path, meta, num_classes, class_names)
        return predictor(cfg, model, names, device, amp, meta=meta, **options)

    @classmethod
    def from_exported(cls, cfg: DictConfig, path: str, device: str = "auto", amp: str = "none",
                      class_names: Union[None, str, Path, Sequence[str]] = None, **options) -> "Predictor":
        """The predictor of a model written by tools/export.py (ONNX Runtime or TorchScript), with the PyTorch
        predictor's pre- and post-processing; its metadata must fit the config (input size, classes)."""
        if amp != "none":
            raise ConfigError(f"--amp {amp}: {path} is an exported model, which runs in the precision it was "
                              "exported in (fp32)")
        model = open_exported(path, cls.task, pick_device(device))
        check_config(model.meta, cfg, path)
        names = cls.class_names_for(cfg, path, model.meta, int(model.meta["num_classes"]), class_names)
        return cls(cfg, model, names, device, amp, meta=model.meta, **options)

    @classmethod
    def class_names_for(cls, cfg: DictConfig, path: str, meta: Dict, num_classes: int,
                        class_names: Union[None, str, Path, Sequence[str]]) -> List[str]:
        """`class_names` (a list or a file of one name per line) when given, else the checkpoint's, else the task's
        released names for that many classes, else 'class 0', 'class 1', ..."""
        if class_names is None:
            names = meta.get("class_names") or cls.model_class_names(cfg, num_classes)
            if names is None:
                print_warning(f"{path}: no class names known for its {num_classes} classes; they are shown as "
                              "'class 0', 'class 1', ... (--class-names FILE names them)")
                names = [f"class {i}" for i in range(num_classes)]
            return list(names)
        names = read_class_names(class_names) if isinstance(class_names, (str, Path)) else list(class_names)
        if len(names) != num_classes:
            source = class_names if isinstance(class_names, (str, Path)) else "class_names"
            raise ClassNamesError(f"{source}: {len(names)} class names, but the model in {path} predicts "
                                  f"{num_classes} classes")
        return names

    @classmethod
    @abstractmethod
    def load(cls, cfg: DictConfig, path: str, obj, meta: Dict, unsafe: bool):
        """(the task model with the weights of the checkpoint at `path`, whose object `obj` is already mapped and
        whose 'meta' entry is `meta`, and its number of classes)."""

    @classmethod
    @abstractmethod
    def model_class_names(cls, cfg: DictConfig, num_classes: int) -> Optional[List[str]]:
        """The class names of a model without names in its checkpoint (released models: COCO, ADE20K, ImageNet)."""

    def autocast(self):
        return autocast(self.device.type, self.amp)

    def __call__(self, image: ImageLike) -> Dict[str, torch.Tensor]:
        return self.predict([image])[0]

    def predict(self, images: Sequence[ImageLike]) -> List[Dict[str, torch.Tensor]]:
        return self.predict_tensors([to_image(image, self.read_image) for image in images])

    @abstractmethod
    def predict_tensors(self, images: List[torch.Tensor]) -> List[Dict[str, torch.Tensor]]:
        """The predictions of uint8 (3, H, W) images, on the CPU and at each image's size."""

    @abstractmethod
    def draw(self, image: ImageLike, prediction: Dict[str, torch.Tensor]) -> Image.Image:
        """The picture of `prediction` on `image`, for a person."""

    @classmethod
    def files_of(cls, source: str) -> List[str]:
        """The files (relative to the output folder) that `save` writes for the image `source` (its path relative
        to the folder it was found in): the picture, a PNG of the same name."""
        return [str(Path(source).with_suffix(".png"))]

    @abstractmethod
    def save(self, out: Path, source: str, image: torch.Tensor, prediction: Dict[str, torch.Tensor],
             image_id: int) -> List[Dict]:
        """Write `files_of(source)` under `out`; returns the image's records for `save_summary`."""

    @abstractmethod
    def save_summary(self, out: Path, records: List[Dict]) -> None:
        """Write `summary_files` from the records of every image."""
