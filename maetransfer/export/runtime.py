"""Exported models as one more kind of checkpoint: an ONNX file (run by ONNX Runtime) or a TorchScript file, with the
metadata written into it, wrapped as the task's model so that prediction and --eval-only run it through their own
pre- and post-processing (`open_exported`).

The metadata travels inside the file (ONNX `metadata_props`, TorchScript extra file) under `META_KEY`, so a model
file alone is enough; `export.json` beside it adds the export's self-check figures and provenance.
"""
import json
import zipfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from ..errors import InputError
from ..tasks import TASK_NAMES
from .graphs import GRAPHS

META_KEY = "maetransfer"
META_VERSION = 1
MODEL_FILES = {"onnx": "model.onnx", "torchscript": "model.pt"}


class ExportError(InputError, ValueError):
    """A model that cannot be exported, or an exported file that cannot be run as asked."""


def _torchscript_meta(path: Path) -> Optional[str]:
    """The metadata entry of a TorchScript archive written by the exporter, or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith(f"/extra/{META_KEY}.json")]
            return archive.read(names[0]).decode() if names else None
    except (zipfile.BadZipFile, OSError, UnicodeDecodeError):
        return None


def is_exported(path) -> bool:
    """Whether `path` names an exported model: an .onnx file, or a TorchScript archive carrying our metadata (a .pt
    can also be a plain checkpoint, which stays one)."""
    path = Path(path)
    if not path.is_file():
        return False
    return path.suffix == ".onnx" or _torchscript_meta(path) is not None


def _parse_meta(text: Optional[str], path: Path) -> Dict:
    if text is None:
        raise ExportError(f"{path}: no {META_KEY} metadata in the model (not written by tools/export.py); export it "
                          "with tools/export.py")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ExportError(f"{path}: its {META_KEY} metadata is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("task") not in GRAPHS:
        raise ExportError(f"{path}: its {META_KEY} metadata names no known task")
    if int(meta.get("version", 0)) > META_VERSION:
        raise ExportError(f"{path}: metadata version {meta['version']} is newer than this maetransfer reads "
                          f"({META_VERSION}); update maetransfer")
    return meta


def _ort_providers(device: torch.device) -> List[str]:
    import onnxruntime as ort

    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        from ..data.images import print_warning

        print_warning(f"device {device}: this onnxruntime has no CUDA provider (pip install onnxruntime-gpu); the "
                      "exported model runs on the CPU")
        return ["CPUExecutionProvider"]
    return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]


class ExportedGraph:
    """One exported file ready to run: `graph(*tensors)` -> the output tensors (on the CPU), `meta` its metadata,
    `runtime` 'onnx' or 'torchscript'."""

    def __init__(self, path, device: torch.device = torch.device("cpu"), threads: int = 0):
        self.path = Path(path)
        self.device = device
        if not self.path.is_file():
            raise ExportError(f"{self.path}: no such exported model")
        if self.path.suffix == ".onnx":
            self.runtime = "onnx"
            self._open_onnx(threads)
        else:
            self.runtime = "torchscript"
            self._open_torchscript()
        self.task = self.meta["task"]

    def _open_onnx(self, threads: int) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ExportError(f"{self.path}: running an ONNX model needs onnxruntime (pip install -e \".[export]\")"
                              ) from None
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: ONNX Runtime warns about every initializer it folds
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=_ort_providers(self.device))
        except ExportError:
            raise
        except Exception as exc:  # onnxruntime raises its own exception types for an unreadable file
            message = " ".join(str(exc).split())
            raise ExportError(f"{self.path}: not a readable ONNX model ({message[:200]})") from None
        self.meta = _parse_meta(self.session.get_modelmeta().custom_metadata_map.get(META_KEY), self.path)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def _open_torchscript(self) -> None:
        extra = {f"{META_KEY}.json": ""}
        try:
            self.module = torch.jit.load(str(self.path), map_location=self.device, _extra_files=extra)
        except Exception as exc:  # TorchScript's loader raises RuntimeError / ValueError with long messages
            message = " ".join(str(exc).split())
            raise ExportError(f"{self.path}: not a readable TorchScript model ({message[:200]})") from None
        self.meta = _parse_meta(extra[f"{META_KEY}.json"] or None, self.path)

    def __call__(self, *inputs: torch.Tensor) -> List[torch.Tensor]:
        if self.runtime == "onnx":
            feed = {name: x.detach().cpu().numpy() for name, x in zip(self.input_names, inputs)}
            return [torch.from_numpy(np.asarray(y)) for y in self.session.run(None, feed)]
        with torch.no_grad():
            outputs = self.module(*[x.to(self.device) for x in inputs])
        return [y.cpu() for y in (outputs if isinstance(outputs, (tuple, list)) else (outputs,))]


class ExportedModel(nn.Module):
    """Base of the task wrappers: no parameters, runs `graph`; `device` is where its inputs and outputs live."""

    def __init__(self, graph: ExportedGraph):
        super().__init__()
        self.graph = graph
        self.meta = graph.meta
        self.device = torch.device("cpu")

    def to(self, *args, **kwargs):  # the provider was chosen when the file was opened
        return self


class ExportedClassifier(ExportedModel):
    """`model(images)` -> logits, as the PyTorch classifier."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = list(images.shape[-2:])
        if size != list(self.meta["input_size"]):
            raise ExportError(f"{self.graph.path}: exported for {_size(self.meta['input_size'])} images, given "
                              f"{_size(size)} (model.img_size must be the exported size)")
        return self.graph(images.float())[0].to(images.device)


class ExportedSegmentor(ExportedModel):
    """`encode_decode(crops)` -> logits at the crop size and `num_classes`, what `seg.inference` runs windows and
    whole images through."""

    def __init__(self, graph: ExportedGraph):
        super().__init__(graph)
        self.num_classes = int(self.meta["num_classes"])

    def encode_decode(self, crops: torch.Tensor) -> torch.Tensor:
        size = list(crops.shape[-2:])
        if size != list(self.meta["input_size"]):
            raise ExportError(f"{self.graph.path}: the exported segmentor takes {_size(self.meta['input_size'])} "
                              f"crops, and inference gave it {_size(size)} (images smaller than the crop after the "
                              "test resize, or eval.mode=whole, need the PyTorch model)")
        return self.graph(crops.float())[0].to(crops.device)


class ExportedDetector(ExportedModel):
    """`model(images, output_sizes=...)` -> per image boxes, scores, labels and masks, as the PyTorch detector in
    eval mode: images normalised and padded, the graph run on each, masks pasted, with the detector's own code."""

    def __init__(self, graph: ExportedGraph):
        super().__init__(graph)
        meta = self.meta
        self.pixel_mean = torch.tensor(meta["pixel_mean"], dtype=torch.float32).view(-1, 1, 1)
        self.pixel_std = torch.tensor(meta["pixel_std"], dtype=torch.float32).view(-1, 1, 1)
        self.pad_size = int(meta["input_size"][0])
        self.mask_threshold = float(meta["mask_threshold"])

    def forward(self, images: Sequence[torch.Tensor], output_sizes: Optional[List[Tuple[int, int]]] = None):
        from ..det.model import normalize_and_pad, postprocess_detection

        batch, sizes = normalize_and_pad([image.cpu() for image in images], self.pixel_mean, self.pixel_std,
                                         self.pad_size)
        results = []
        for i, (size, out) in enumerate(zip(sizes, output_sizes or sizes)):
            boxes, scores, labels, mask_probs = self.graph(batch[i:i + 1], torch.tensor(size, dtype=torch.int64))
            detection = {"boxes": boxes, "scores": scores, "labels": labels, "mask_probs": mask_probs}
            results.append(postprocess_detection(detection, size, out, self.mask_threshold))
        return results


WRAPPERS = {"cls": ExportedClassifier, "seg": ExportedSegmentor, "det": ExportedDetector}


def _size(size: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in size)


def open_exported(path, task: str, device: torch.device = torch.device("cpu"), threads: int = 0) -> ExportedModel:
    """The exported model at `path` as the model of `task` ('det', 'seg', 'cls'); ExportError (one line) for a file
    that is not an exported model of that task."""
    graph = ExportedGraph(path, device, threads)
    if graph.task != task:
        raise ExportError(f"{path}: an exported {TASK_NAMES[graph.task]} model, but the config is a "
                          f"{TASK_NAMES[task]} recipe")
    return WRAPPERS[task](graph)


def check_config(meta: Dict, cfg, path, num_classes: Optional[int] = None) -> None:
    """ExportError unless the exported model takes the input the config's pipeline makes (its size) and predicts
    its classes (model.num_classes for segmentation; `num_classes`, the evaluated data set's, where given)."""
    task = meta["task"]
    key, expected = input_size_of(task, cfg)
    if list(meta["input_size"]) != expected:
        raise ExportError(f"{path}: exported for {_size(meta['input_size'])} inputs, but the config's {key} gives "
                          f"{_size(expected)}: use the config it was exported from")
    if task == "seg" and int(meta["num_classes"]) != int(cfg.model.num_classes):
        raise ExportError(f"{path}: predicts {meta['num_classes']} classes, but the config's model.num_classes is "
                          f"{cfg.model.num_classes}")
    if num_classes is not None and int(meta["num_classes"]) != int(num_classes):
        raise ExportError(f"{path}: predicts {meta['num_classes']} classes, but the evaluated data set has "
                          f"{num_classes}")


INPUT_SIZE_KEYS = {"det": "model.img_size", "seg": "eval.crop_size", "cls": "model.img_size"}


def input_size_of(task: str, cfg) -> Tuple[str, List[int]]:
    """(the config key, the (h, w) it gives) of the input a task's graph takes: the detector's padded square, the
    segmentor's crop, the classifier's image."""
    key = INPUT_SIZE_KEYS[task]
    value = OmegaConf.select(cfg, key)
    return key, [int(s) for s in value] if task == "seg" else [int(value)] * 2
