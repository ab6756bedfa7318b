"""What a finished job left in its output folder, read from the files the tools write (never from their modules):
metrics.json, log.jsonl, per-class results, sample pictures, config.yaml; and the reconstructions of the pretraining
run an encoder came from."""
import csv
import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..cli import TOOL_DEFAULTS
from ..config import load_config
from ..tasks import TOOLS
from .suite import DEMO_ENCODER, Encoder


def metric_title(tool: str, key: str) -> str:
    return dict(TOOLS[tool].metrics).get(key, key)


def flatten(metrics: Dict, prefix: str = "") -> Dict[str, Optional[float]]:
    """{'bbox': {'AP': 1.0}} -> {'bbox.AP': 1.0}: numbers and nulls only (lists, such as seg's per_class, left out)."""
    flat = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        elif value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
            flat[name] = None if value is None or math.isnan(value) else float(value)
    return flat


def read_json(path: Path) -> Optional[Dict]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_metrics(output_dir: Path) -> Optional[Dict[str, Optional[float]]]:
    """The job's metrics.json, flattened; None when it wrote none (yet)."""
    metrics = read_json(Path(output_dir) / "metrics.json")
    return flatten(metrics) if isinstance(metrics, dict) else None


def read_log(output_dir: Path) -> List[Dict]:
    """The records of log.jsonl; a line cut short by a kill is skipped."""
    records = []
    try:
        lines = (Path(output_dir) / "log.jsonl").read_text().splitlines()
    except OSError:
        return records
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def curves(records: List[Dict]) -> Dict[str, List[Tuple[int, float]]]:
    """Every scalar of the log over iterations: the loss and its parts, the learning rate, eval/* metrics."""
    series: Dict[str, List[Tuple[int, float]]] = {}
    for record in records:
        step = record.get("iter")
        for key, value in record.items():
            if key in ("iter", "epoch") or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            if isinstance(step, int) and math.isfinite(value):
                series.setdefault(key, []).append((step, float(value)))
    return series


def _float(text) -> Optional[float]:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def per_class(tool: str, output_dir: Path) -> Dict[str, Dict[str, Optional[float]]]:
    """{result name: {class: value}} of a job of `tool`, by the reader its task declares (tasks.TaskSpec.per_class)."""
    return TOOLS[tool].load("per_class")(Path(output_dir))


def detection_per_class(output_dir: Path) -> Dict[str, Dict[str, Optional[float]]]:
    """Per-category box and mask AP (metrics.json 'AP-<name>')."""
    metrics = read_json(output_dir / "metrics.json") or {}
    return {f"{title} per category": {k[3:]: _float(v) for k, v in metrics.get(part, {}).items()
                                     if k.startswith("AP-")}
            for part, title in (("bbox", "box AP"), ("segm", "mask AP")) if part in metrics}


def segmentation_per_class(output_dir: Path) -> Dict[str, Dict[str, Optional[float]]]:
    """Per-class IoU (metrics.json per_class)."""
    rows = (read_json(output_dir / "metrics.json") or {}).get("per_class") or []
    return {"IoU per class": {str(row.get("class")): _float(row.get("IoU")) for row in rows}} if rows else {}


def classification_per_class(output_dir: Path) -> Dict[str, Dict[str, Optional[float]]]:
    """Per-class accuracy (per_class_accuracy.csv)."""
    try:
        with open(output_dir / "per_class_accuracy.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return {}
    return {"accuracy per class": {row["name"]: _float(row["accuracy"]) for row in rows}} if rows else {}


def samples(tool: str, output_dir: Path, count: int = 2) -> List[Path]:
    """Pictures of the job's results (the task's `pictures`: detections, segmentation triptychs, the confusion
    matrix), at most `count` of each kind."""
    return [p for pattern in TOOLS[tool].pictures for p in sorted(Path(output_dir).glob(pattern))[:count]
            if p.is_file()]


def pretraining_folder(encoder: Encoder) -> Optional[Path]:
    """The output folder of the MAE pretraining that an encoder came from, when the report can tell: the demo
    pretraining for `demo`, and for a file the folder it sits in when that is a pretraining run (reconstructions/)."""
    if encoder.spec == DEMO_ENCODER:
        return Path(load_config(TOOL_DEFAULTS["pretrain_mae"][0]).train.output_dir)
    if not encoder.spec:
        return None
    folder = Path(encoder.spec).parent
    return folder if (folder / "reconstructions").is_dir() else None


def reconstructions(folder: Optional[Path]) -> Optional[Path]:
    """The last reconstruction figure of a pretraining run."""
    if folder is None:
        return None
    figures = sorted((folder / "reconstructions").glob("*.png"))
    return figures[-1] if figures else None
