"""Suites of transfer jobs (`configs/report/<name>.yaml`), the encoders they compare, and the published numbers the
rows are compared with (`configs/report/paper_results.yaml`, one entry per recipe config).

A suite file:

    description: one paragraph for the report
    encoders: {mae: demo, random: ""}     # used when the command line gives no --encoder
    data_roots: {coco: "COCO 2017 (annotations/, train2017/, val2017/)"}   # data.<key>=PATH on the command line
    slurm: {gpus_per_node: 8, time_min: 4320}   # resources of every job under --launcher slurm (JobResources fields)
    jobs:
      - name: coco_vitdet                  # folder name of the job's runs
        title: COCO Mask R-CNN (ViTDet)    # the row's title in the report
        tool: train_det                    # tools/<tool>.py: train_det, train_seg or train_cls
        config: configs/det/mask_rcnn_vit_base_coco.yaml
        overrides: [train.batch_size=2, train.accum_iter=4]
        data: coco                         # the data root it needs, passed as data.root (absent: the config's own)
        reference: none                    # paper_results.yaml key; default: the config; none: no published number
        note: why the row is as it is
        slurm: {nodes: 2}                  # this job's resources, over the suite's

A job whose config file does not exist is listed with the status "no recipe"; one whose data root is not given is
listed as skipped, with the command that would fill it.
"""
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from omegaconf import OmegaConf

from .. import zoo
from ..checkpoint import read_checkpoint
from ..config import CONFIG_ROOT
from ..engine.submission import JobResources
from ..errors import InputError
from ..tasks import TOOLS

SUITE_ROOT = CONFIG_ROOT / "report"
PAPER_RESULTS = SUITE_ROOT / "paper_results.yaml"
TRANSFER_TOOLS = tuple(tool for tool, spec in TOOLS.items() if spec.transfers)
DEMO_ENCODER = "demo"  # the tools' train.init_checkpoint value for the demo-pretrained encoder (pretrain/demo.py)
NO_REFERENCE = "none"
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_JOB_KEYS = {"name", "title", "tool", "config", "overrides", "data", "reference", "note", "slurm"}
_SUITE_KEYS = {"description", "encoders", "data_roots", "slurm", "jobs"}
RESOURCE_KEYS = {f.name for f in fields(JobResources)} - {"job_name"}


class SuiteError(InputError):
    """A suite, an encoder, a data root or a report folder that the report cannot use; one line naming it."""


@dataclass(frozen=True)
class Encoder:
    """An encoder under comparison: `spec` is what train.init_checkpoint takes ('' = random initialisation)."""
    label: str
    spec: str

    @property
    def description(self) -> str:
        if not self.spec:
            return "random initialisation"
        if self.spec == DEMO_ENCODER:
            return "the demo MAE encoder (configs/pretrain/demo.yaml, pretrained by the first job that needs it)"
        if self.spec in zoo.RELEASES:
            return f"released checkpoint: {zoo.RELEASES[self.spec].what}"
        return "checkpoint folder" if Path(self.spec).is_dir() else "checkpoint file" if Path(self.spec).exists() \
            else "Hugging Face hub id"


def parse_encoder(text: str) -> Encoder:
    """'[LABEL=]SPEC': a label is letters, digits, '_', '.', '-'; without one the label comes from the spec."""
    label, sep, spec = text.partition("=")
    if sep and _LABEL.fullmatch(label):
        return Encoder(label, spec)
    spec = text
    name = Path(spec.rstrip("/")).name
    for suffix in (".pth", ".pt", ".pkl", ".bin", ".safetensors", ".ckpt"):
        name = name.removesuffix(suffix)
    label = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip("_.-") if spec else "random"
    if not label:
        raise SuiteError(f"--encoder {text}: give it a label, as in --encoder mine={text}")
    return Encoder(label, spec)


def check_encoder(encoder: Encoder, unsafe: bool = False) -> None:
    """SuiteError (one line) for an encoder that no job could start from: a file that does not read as a ViT
    checkpoint, or a spec that is neither a file, a released name nor a Hugging Face id (hub ids are downloaded here,
    once for all the jobs). Released names are fetched by the first job that needs them."""
    if encoder.spec in ("", DEMO_ENCODER) or encoder.spec in zoo.RELEASES:
        return
    try:
        read_checkpoint(zoo.resolve(encoder.spec, unsafe), unsafe)
    except InputError as exc:
        raise SuiteError(f"--encoder {encoder.label}={encoder.spec}: {exc}") from None


@dataclass(frozen=True)
class Reference:
    """Published values of one recipe, in the metric names of the tool's metrics.json (dotted when nested)."""
    key: str
    values: Dict[str, float]
    source: str


@dataclass
class JobSpec:
    """One row of a suite, before it is paired with an encoder."""
    name: str
    title: str
    tool: str
    config: str
    overrides: List[str] = field(default_factory=list)
    data: Optional[str] = None
    reference: Optional[Reference] = None
    note: str = ""
    resources: Dict = field(default_factory=dict)

    @property
    def recipe_exists(self) -> bool:
        return Path(self.config).is_file() or (CONFIG_ROOT.parent / self.config).is_file()


@dataclass
class Suite:
    name: str
    path: Path
    description: str
    encoders: List[Encoder]
    data_roots: Dict[str, str]
    jobs: List[JobSpec]

    @property
    def title(self) -> str:
        """How the report names it: a shipped suite by its name, a suite file of one's own by its file name."""
        return self.name if self.path.parent.resolve() == SUITE_ROOT.resolve() else self.path.name


def suite_names() -> List[str]:
    return sorted(p.stem for p in SUITE_ROOT.glob("*.yaml") if p != PAPER_RESULTS)


def _read_yaml(path: Path, what: str) -> dict:
    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as exc:  # yaml and OmegaConf errors alike: name the file, keep one line
        raise SuiteError(f"{path}: not a readable {what} ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict):
        raise SuiteError(f"{path}: a {what} must be a mapping at the top level")
    return data


def load_references(path: Path = PAPER_RESULTS) -> Dict[str, Reference]:
    """paper_results.yaml: {recipe config: {metric: value, ..., source: text}}."""
    references = {}
    for key, entry in _read_yaml(path, "table of published results").items():
        if not isinstance(entry, dict) or not isinstance(entry.get("source"), str):
            raise SuiteError(f"{path}: {key}: needs metric values and a source")
        values = {k: v for k, v in entry.items() if k != "source"}
        if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values.values()):
            raise SuiteError(f"{path}: {key}: metric values must be numbers")
        references[key] = Reference(key, {k: float(v) for k, v in values.items()}, entry["source"])
    return references


def suite_path(name: str) -> Path:
    """A suite by name (configs/report/<name>.yaml) or by the path of a YAML file."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    named = SUITE_ROOT / f"{name}.yaml"
    if name in suite_names() and named.is_file():
        return named
    raise SuiteError(f"unknown suite '{name}': choose one of {', '.join(suite_names())} or give a suite's YAML file")


def _job(entry, index: int, path: Path, data_roots: Dict[str, str], defaults: Dict,
         references: Dict[str, Reference]) -> JobSpec:
    where = f"{path}: jobs[{index}]"
    if not isinstance(entry, dict):
        raise SuiteError(f"{where}: a job must be a mapping")
    unknown = set(entry) - _JOB_KEYS
    if unknown:
        raise SuiteError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(sorted(_JOB_KEYS))})")
    missing = [k for k in ("name", "tool", "config") if not entry.get(k)]
    if missing:
        raise SuiteError(f"{where}: missing {', '.join(missing)}")
    name = str(entry["name"])
    if not _LABEL.fullmatch(name):
        raise SuiteError(f"{where}: name '{name}' must be letters, digits, '_', '.', '-' (it names a folder)")
    if entry["tool"] not in TRANSFER_TOOLS:
        raise SuiteError(f"{where}: tool '{entry['tool']}' is not one of {', '.join(TRANSFER_TOOLS)}")
    data = entry.get("data")
    if data is not None and data not in data_roots:
        raise SuiteError(f"{where}: data '{data}' is not one of the suite's data_roots ({', '.join(data_roots)})")
    overrides = entry.get("overrides") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
        raise SuiteError(f"{where}: overrides must be a list of key=value strings")
    resources = {**defaults, **(entry.get("slurm") or {})}
    unknown = set(resources) - RESOURCE_KEYS
    if unknown:
        raise SuiteError(f"{where}: unknown slurm setting(s) {', '.join(sorted(unknown))}")
    key = str(entry.get("reference", entry["config"]))
    if key != NO_REFERENCE and "reference" in entry and key not in references:
        raise SuiteError(f"{where}: reference '{key}' is not in {PAPER_RESULTS}")
    return JobSpec(name=name, title=str(entry.get("title") or name), tool=entry["tool"], config=str(entry["config"]),
                   overrides=list(overrides), data=data, reference=references.get(key), note=str(entry.get("note", "")),
                   resources=resources)


def load_suite(name: str) -> Suite:
    path = suite_path(name)
    raw = _read_yaml(path, "suite")
    unknown = set(raw) - _SUITE_KEYS
    if unknown:
        raise SuiteError(f"{path}: unknown key(s) {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(sorted(_SUITE_KEYS))})")
    data_roots = {str(k): str(v) for k, v in (raw.get("data_roots") or {}).items()}
    defaults = raw.get("slurm") or {}
    if set(defaults) - RESOURCE_KEYS:
        raise SuiteError(f"{path}: unknown slurm setting(s) {', '.join(sorted(set(defaults) - RESOURCE_KEYS))}")
    references = load_references()
    jobs = [_job(entry, i, path, data_roots, defaults, references) for i, entry in enumerate(raw.get("jobs") or [])]
    if not jobs:
        raise SuiteError(f"{path}: no jobs")
    names = [job.name for job in jobs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SuiteError(f"{path}: job name(s) {', '.join(duplicates)} used twice")
    encoders = [Encoder(str(label), "" if spec is None else str(spec)) for label, spec in
                (raw.get("encoders") or {}).items()]
    return Suite(name=path.stem, path=path, description=str(raw.get("description", "")).strip(), encoders=encoders,
                 data_roots=data_roots, jobs=jobs)


def check_encoders(encoders: Sequence[Encoder]) -> None:
    labels = [e.label for e in encoders]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise SuiteError(f"--encoder label(s) {', '.join(duplicates)} given twice: label them apart "
                         f"(--encoder NAME=SPEC)")


def parse_data_roots(suite: Suite, items: Sequence[str]) -> Dict[str, str]:
    """'data.<key>=PATH' command-line items -> {key: PATH}; each key one of the suite's data roots, each path an
    existing folder."""
    roots = {}
    for item in items:
        key, sep, value = item.partition("=")
        name = key.removeprefix("data.")
        if not sep or not key.startswith("data.") or not value:
            raise SuiteError(f"'{item}' is not a data root: give data.KEY=PATH with KEY one of "
                             f"{', '.join(suite.data_roots) or '(none: suite ' + suite.name + ' needs no data)'}")
        if name not in suite.data_roots:
            known = ", ".join(f"data.{k}" for k in suite.data_roots) or "none"
            raise SuiteError(f"{key}: suite {suite.name} has no such data root (it takes: {known})")
        if not Path(value).is_dir():
            raise SuiteError(f"{key}={value}: no such folder")
        roots[name] = value
    return roots
