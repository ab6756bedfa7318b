"""Export a trained model of any task to ONNX or TorchScript, and check the exported file against the PyTorch model
before anything is published: the file is written and run in a temporary folder inside the output folder and moved
into place only once its predictions equal PyTorch's on the same images (`check`), so a failed or wrong export
leaves the output folder as it was.

ONNX through `torch.onnx.export(dynamo=False)`: the TorchScript-based exporter traces the eval-mode code, for which
torchvision registers NMS and RoIAlign (aligned, opset >= 16). The dynamo exporter has no translation of
torchvision's detection ops (RoIAlign fails under it at opset 22, pytorch/vision#9251) and specialises size-1
dimensions, so it is not used.
"""
import contextlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torchvision.transforms import Normalize

from ..data.demo import render_scenes
from ..files import write_text
from ..predict.base import Predictor, task_of, to_image
from .check import CHECKS
from .graphs import GRAPHS, dynamic_axes, example_inputs
from .runtime import META_KEY, META_VERSION, MODEL_FILES, ExportError, input_size_of

DEFAULT_OPSET = 17
# The lowest opset each graph exports correctly at: the detector's RoIAlign(aligned=True) exists from 16 (torchvision
# exports the unaligned op below, with a warning only); scaled_dot_product_attention from 14.
MIN_OPSET = {"det": 16, "seg": 14, "cls": 14}
_SDPA = "scaled_dot_product_attention exports from opset 14"
MIN_OPSET_REASON = {"det": "RoIAlign(aligned=True), the detector's pooler, exports correctly only from opset 16",
                    "seg": _SDPA, "cls": _SDPA}
METADATA_FILE = "export.json"
CONFIG_FILE = "config.yaml"


def sample_images(task: str, cfg: DictConfig, paths: Sequence[str] = ()) -> List[torch.Tensor]:
    """uint8 (3, H, W) images for the check: the given files, else a generated demo scene at the task's input size
    (shapes on a textured background: something for every task to find)."""
    if paths:
        return [to_image(p) for p in paths]
    side = max(input_size_of(task, cfg)[1])
    image, _ = next(render_scenes(1, size=side, seed=0))
    return [torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)]


def check_output(output: Path, overwrite: bool) -> None:
    """An InputError unless `output` can take the export: no earlier export there, unless `overwrite`."""
    from ..cli import check_writable_folder, refuse_earlier_outputs

    check_writable_folder(output, "--output-dir")
    earlier = [name for name in (*MODEL_FILES.values(), METADATA_FILE) if (output / name).exists()]
    refuse_earlier_outputs(output, earlier, "export", overwrite)


def _metadata(task: str, predictor: Predictor, cfg: DictConfig, fmt: str, opset: Optional[int],
              checkpoint: str) -> Dict:
    """What a runtime needs to use the file: task, input, normalisation, classes, thresholds, the config."""
    spec = GRAPHS[task]
    model = predictor.model
    meta = {"version": META_VERSION, "task": task, "format": fmt, "input_size": input_size_of(task, cfg)[1],
            "inputs": list(spec.inputs), "outputs": list(spec.outputs), "class_names": predictor.class_names,
            "num_classes": len(predictor.class_names), "checkpoint": str(checkpoint),
            "exporter": ("torch.onnx.export (TorchScript tracing)" if fmt == "onnx" else "torch.jit.trace"),
            "opset": opset, "torch": torch.__version__}
    if task == "det":
        meta.update(pixel_mean=model.pixel_mean.flatten().tolist(), pixel_std=model.pixel_std.flatten().tolist(),
                    mask_threshold=float(model.mask_threshold), score_thresh=float(cfg.model.box_score_thresh),
                    category_ids=list(predictor.category_ids),
                    test_resize={"short_edge": int(cfg.model.img_size), "max_size": int(cfg.model.img_size)})
    elif task == "seg":
        meta.update(mean=list(cfg.data.mean), std=list(cfg.data.std), scale=list(cfg.data.scale),
                    eval={k: OmegaConf.to_container(cfg.eval)[k] for k in ("mode", "crop_size", "stride")})
    else:
        steps = predictor.transform.transforms
        normalize = next(t for t in steps if isinstance(t, Normalize))
        meta.update(mean=[float(v) for v in normalize.mean], std=[float(v) for v in normalize.std],
                    eval_transform=[repr(t) for t in steps])
    meta["config"] = OmegaConf.to_container(cfg, resolve=True)
    return meta


def write_graph(model: torch.nn.Module, task: str, size: Sequence[int], path, fmt: str = "onnx",
                opset: int = DEFAULT_OPSET, meta: Optional[Dict] = None) -> Path:
    """Trace the graph of `task` around the eval-mode `model` at input `size` and write it to `path` (ONNX or
    TorchScript) with `meta` inside; no check (`export` checks)."""
    graph = GRAPHS[task].wrapper(model).eval()  # eval: the exporter restores the wrapper's mode onto the model
    inputs = example_inputs(task, size)
    text = json.dumps(meta or {"task": task, "version": META_VERSION})
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on Python values; the self-check is the judge
        if fmt == "torchscript":
            traced = torch.jit.trace(graph, inputs, check_trace=False)
            torch.jit.save(traced, str(path), _extra_files={f"{META_KEY}.json": text})
            return Path(path)
        spec = GRAPHS[task]
        torch.onnx.export(graph, inputs, str(path), dynamo=False, opset_version=opset,
                          input_names=list(spec.inputs), output_names=list(spec.outputs),
                          dynamic_axes=dynamic_axes(spec), do_constant_folding=True)
    import onnx

    # the metadata inside the file, so that the file alone is enough; weights above 2 GB stay in external files
    proto = onnx.load(str(path), load_external_data=False)
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, text
    onnx.save(proto, str(path))
    return Path(path)


def _exporter_message(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:300] if lines else type(exc).__name__


def export(cfg: DictConfig, checkpoint: str, output, fmt: str = "onnx", opset: int = DEFAULT_OPSET,
           images: Sequence[str] = (), overwrite: bool = False, unsafe: bool = False,
           class_names=None, source: str = "config") -> Dict:
    """Export the model of `cfg`'s task with the trained weights in `checkpoint` (anything --eval-only takes) into
    the folder `output` as `model.onnx` or `model.pt`, check it against PyTorch on `images` (default: a generated
    scene) and write `export.json` (metadata + check figures) and the resolved `config.yaml` beside it. Returns the
    metadata. ExportError (one line) when it cannot export or the exported model disagrees with PyTorch."""
    if fmt not in MODEL_FILES:
        raise ExportError(f"--format {fmt}: expected one of {', '.join(MODEL_FILES)}")
    task = task_of(cfg, source)
    if fmt == "onnx" and opset < MIN_OPSET[task]:
        raise ExportError(f"--opset {opset}: {MIN_OPSET_REASON[task]}; use --opset {DEFAULT_OPSET}")
    output = Path(output)
    check_output(output, overwrite)
    size = input_size_of(task, cfg)[1]  # a multiple of the patch where the model needs one: config.check_rules
    reference = Predictor.from_config(cfg, checkpoint, device="cpu", class_names=class_names, unsafe=unsafe)
    samples = sample_images(task, cfg, images)
    meta = _metadata(task, reference, cfg, fmt, opset if fmt == "onnx" else None, checkpoint)
    created = not output.exists()
    output.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=output))
    published = False
    try:
        path = staging / MODEL_FILES[fmt]
        try:
            write_graph(reference.model, task, size, path, fmt, opset, meta)
        except (RuntimeError, ValueError, TypeError, NotImplementedError, torch.onnx.errors.OnnxExporterError) as exc:
            raise ExportError(f"{checkpoint}: cannot export the {task} model to {fmt}: {_exporter_message(exc)}"
                              ) from None
        exported = Predictor.from_config(cfg, str(path), device="cpu", class_names=reference.class_names)
        figures = CHECKS[task](reference, exported, samples)
        meta["check"] = {**figures, "images": [str(p) for p in images] or ["generated demo scene"]}
        if not figures["passed"]:
            raise ExportError(f"the exported {task} model disagrees with PyTorch: {figures['summary']}; nothing "
                              f"was written to {output}")
        for file in sorted(staging.iterdir()):  # the model, and any external weight files next to it
            os.replace(file, output / file.name)
        published = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not published:
            with contextlib.suppress(OSError):
                output.rmdir()  # the folder this call made, empty again
    write_text(output / METADATA_FILE, json.dumps(meta, indent=1) + "\n")
    write_text(output / CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))
    return meta

