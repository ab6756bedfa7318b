"""YAML configs: a file may name a `_base_` file (relative path) that it overrides; the command line then overrides
with dotted `key=value` pairs. Keys are strict: an override of a key the config does not have is an error (a typo
must not silently train with the default). Only a new top-level section may be introduced by a derived file. Values
are typed by their defaults: an override of the wrong type is an error when the command line is parsed, not a crash
deep inside a run."""
import difflib
import json
import os
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Tuple, Union

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from .errors import InputError
from .files import write_text
from .sizes import VIT_SIZES

CONFIG_ROOT = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(InputError, ValueError):
    """A config file or override is wrong; the message is one line naming the file or the key."""


def _read_yaml(path: Path) -> DictConfig:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:  # yaml.YAMLError and friends: name the file, keep one line
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path}: a config must be a mapping at the top level")
    return cfg


# A value's type: a tuple of the accepted kinds, each int, float, bool, str, None or ("list", item type); an empty item
# type () means a list of anything.
ValueType = Tuple[Any, ...]
NUMBER: ValueType = (float,)
# Keys whose default does not show their type: a null default means "unset / derived", and a few keys take two types.
# The default's own type covers every other key. Dotted paths; a task that lacks the key never looks it up.
DECLARED_TYPES: Dict[str, ValueType] = {
    "train.lr": (float, None),                    # null: blr * effective batch / 256
    "train.clip_grad": (float, None),             # null: no clipping
    "train.steps": (("list", NUMBER),),           # iterations, or fractions < 1 of the run
    "train.compile": (bool, str),                 # true, or a torch.compile mode such as max-autotune
    "train.hooks": (("list", ()),),               # dotted import paths, or mappings with 'type' and arguments
    "model.embed_dim": (int, None),               # null: the ViT size's own value
    "model.depth": (int, None),
    "model.num_heads": (int, None),
    "model.patch_size": (int, None),
    "model.out_indices": (("list", (int,)), None),  # seg: null = depth/4 steps
    "model.layer_scale_init": (float, None),      # seg: null = no layer scale
    "data.num_classes": (int, None),              # cls: null = as many as the dataset defines
    "data.class_names": (("list", (str,)), None),  # seg: null = the ADE20K names
    "aug.color_jitter": (float, ("list", NUMBER), None),  # timm: one strength or per-channel strengths
    "aug.cutmix_minmax": (("list", NUMBER), None),
    "eval.crop_pct": (float, None),               # cls: null = the official size-dependent crop
    "eval.min_size": (int, None),                 # seg: null = no lower bound on multi-scale views
}


# Keys that take one of a few words (a key a task lacks is never looked up). Checked wherever a value is set -- a
# derived recipe or the command line -- so a misspelt word ends with one line before anything runs.
CHOICES: Dict[str, Tuple[str, ...]] = {
    "train.amp": ("none", "bf16", "fp16"),
    "train.schedule": ("cosine", "step", "poly", "constant"),
    "train.optimizer": ("adamw", "sgd", "lars"),
    "train.device": ("auto", "cpu", "cuda"),
    "eval.amp": ("none", "bf16", "fp16"),
    "model.arch": tuple(VIT_SIZES),
    "model.rel_pos": ("decomposed", "bias", ""),          # det, seg
    "model.pyramid": ("simple", "multilevel"),            # det
    **{f"model.{k}": ("LN", "BN", "SyncBN", "GN", "") for k in ("pyramid_norm", "fpn_norm", "head_norm")},  # det
    "model.norm": ("BN", "SyncBN"),                       # seg
    "model.mode": ("finetune", "linear", "partial"),      # cls
    "model.global_pool": ("avg", "token"),                # cls
    "model.mask_sampler": ("random", "block", "grid"),    # pretrain
    "data.format": ("imagefolder", "inat", "places", "csv"),  # cls
    "eval.mode": ("slide", "whole"),                      # seg
}
# Numbers with a range: (test, what the value must be). None passes where the key's type allows it.
_AT_LEAST_1 = (lambda v: v >= 1, "at least 1")
_AT_LEAST_0 = (lambda v: v >= 0, "at least 0")
RANGES = {
    **{f"train.{k}": _AT_LEAST_1 for k in ("batch_size", "accum_iter", "log_period")},
    **{f"train.{k}": _AT_LEAST_0 for k in ("epochs", "max_iters", "num_workers", "checkpoint_period", "eval_period",
                                           "warmup_epochs", "warmup_iters", "weight_decay", "min_lr", "num_threads")},
    "train.lr": (lambda v: v > 0, "above 0"),
    "train.blr": (lambda v: v > 0, "above 0"),
    "train.layer_decay": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "train.ema_decay": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "model.mask_ratio": (lambda v: 0 < v < 1, "in (0, 1)"),
}


# One idea has one name in every task's recipes; a file or override with the earlier name is told the current one.
RENAMED_KEYS = {"model.drop_path": "model.drop_path_rate", "data.input_size": "model.img_size",
                "data.train": "data.train_split", "data.val": "data.val_split",
                "model.pixel_mean": "data.mean", "model.pixel_std": "data.std"}


def did_you_mean(word: str, candidates: Iterable[str], cutoff: float = 0.6) -> str:
    """' (did you mean X?)' with the candidate closest to a misspelt `word`, or '' when none is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in candidates], n=1, cutoff=cutoff)
    return f" (did you mean {close[0]}?)" if close else ""


def _dotted_keys(cfg: dict, prefix: str = "") -> Iterable[str]:
    for key, value in cfg.items():
        yield from _dotted_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]


def _closest_key(key: str, cfg: DictConfig) -> str:
    """' (did you mean X?)' with the valid key closest to a misspelt one: a name of the same section
    (model.drop_rate -> model.drop_path_rate), else the closest whole dotted key (trian.lr -> train.lr), else the
    one key of another section with the same name (data.warmup_iters -> train.warmup_iters); '' when none is."""
    keys = list(_dotted_keys(OmegaConf.to_container(cfg)))
    section, _, leaf = key.rpartition(".")
    same_section = ({k: k for k in cfg} if not section else  # an unknown section: the sections
                    {k.rpartition(".")[2]: k for k in keys if k.rpartition(".")[0] == section})
    close = difflib.get_close_matches(leaf, list(same_section), n=1, cutoff=0.6)
    if close:
        return f" (did you mean {same_section[close[0]]}?)"
    hint = did_you_mean(key, keys, cutoff=0.8)
    same_leaf = [k for k in keys if k.rpartition(".")[2] == leaf]
    return hint or (f" (did you mean {same_leaf[0]}?)" if len(same_leaf) == 1 else "")


def _value_problem(name: str, value) -> Optional[str]:
    """Why `value` is not allowed for key `name` (None when it is)."""
    if name in CHOICES and value not in CHOICES[name]:
        return ("is not one of " + ", ".join(repr(c) if c == "" else c for c in CHOICES[name])
                + did_you_mean(value, [c for c in CHOICES[name] if c], cutoff=0.7))  # not gpu -> cpu
    if name in RANGES and isinstance(value, (int, float)) and not isinstance(value, bool):
        test, what = RANGES[name]
        return None if test(value) else f"must be {what}"
    return None


def _type_of(default) -> ValueType:
    if default is None:
        return ()  # unknown: any value
    if isinstance(default, list):
        items = {kind for item in default for kind in _type_of(item)}
        # a list of ints and floats (e.g. scale factors 4, 2, 1, 0.5) is a list of numbers
        return (("list", NUMBER if float in items else tuple(items)),)
    return (type(default),)


_KIND_NAMES = {int: ("an integer", "integers"), float: ("a number", "numbers"), bool: ("true or false", "booleans"),
               str: ("a string", "strings"), None: ("null", "nulls")}


def _describe(value_type: ValueType) -> str:
    def one(kind) -> str:
        if not isinstance(kind, tuple):
            return _KIND_NAMES[kind][0]
        return "a list of " + " or ".join(_KIND_NAMES[item][1] for item in kind[1]) if kind[1] else "a list"
    return " or ".join(one(kind) for kind in value_type)


def _coerce(value, value_type: ValueType):
    """`value` as `value_type` says, or raise TypeError. Numbers become strings where a string is expected (a folder
    named 1234), an int a float where a number is (warmup_epochs: 2 in a derived file must still take 0.5 later), a
    whole number in float notation an int (max_iters=1e5) and an empty value ''."""
    if not value_type:
        return value
    for kind in value_type:
        if kind is None and value is None:
            return None
        if isinstance(kind, tuple) and isinstance(value, list):
            return [_coerce(item, kind[1]) for item in value]
        if kind is bool and isinstance(value, bool):
            return value
        if isinstance(value, bool):
            continue
        if kind is float and isinstance(value, (int, float)):
            return float(value)  # stored as a float, so that the key stays typed as one for later overrides
        if kind is int and (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            return int(value)
        if kind is str and (isinstance(value, (str, int, float)) or value is None):
            return "" if value is None else str(value)
    raise TypeError


def _check_types(base: dict, override: dict, source: str, typed_as: Dict[str, str], prefix: str = "") -> dict:
    """`override` with its values coerced to the types of `base`'s; a value of another type is a ConfigError naming
    the key, the value (as typed on the command line when `typed_as` has it) and the expected type."""
    checked = {}
    for key, value in override.items():
        name = f"{prefix}{key}"
        if key not in base or (isinstance(value, str) and "${" in value):
            checked[key] = value  # an unknown key is reported by the merge; an interpolation is typed when resolved
            continue
        default = base[key]
        shown = typed_as.get(name, json.dumps(value))
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {name} is a section of keys, not a value ({name}={shown})")
            checked[key] = _check_types(default, value, source, typed_as, f"{name}.")
            continue
        value_type = DECLARED_TYPES.get(name, _type_of(default))
        try:
            checked[key] = _coerce(value, value_type)
        except TypeError:
            raise ConfigError(f"{source}: {name}={shown} is not {_describe(value_type)}") from None
        problem = _value_problem(name, checked[key])
        if problem:
            raise ConfigError(f"{source}: {name}={shown} {problem}")
    return checked


def _merge_strict(base: DictConfig, override: DictConfig, source: str,
                  typed_as: Optional[Dict[str, str]] = None) -> DictConfig:
    override = OmegaConf.create(_check_types(OmegaConf.to_container(base), OmegaConf.to_container(override),
                                             source, typed_as or {}))
    OmegaConf.set_struct(base, True)
    try:
        return OmegaConf.merge(base, override)
    except ConfigKeyError as exc:
        key = getattr(exc, "full_key", None) or str(exc)
        renamed = RENAMED_KEYS.get(key)
        if renamed and OmegaConf.select(base, renamed, default=None) is not None:
            raise ConfigError(f"{source}: config key '{key}' is now '{renamed}'") from None
        raise ConfigError(f"{source}: unknown config key '{key}'{_closest_key(key, base)}") from None
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{source}: {' '.join(str(exc).split())}") from None


def _get(cfg: DictConfig, key: str):
    """The value at dotted `key`, or None when the config (its task) has no such key."""
    return OmegaConf.select(cfg, key, default=None)


def _encoder(cfg: DictConfig) -> Dict[str, int]:
    """depth, patch size and image size of the configured encoder (explicit values over the named size's)."""
    size = VIT_SIZES[cfg.model.arch]
    encoder = {k: _get(cfg, f"model.{k}") or size[k] for k in ("depth", "patch_size")}
    return encoder | {"size": _get(cfg, "model.img_size")}


def check_rules(cfg: DictConfig) -> None:
    """The rules between keys that can be checked before anything runs (each only where the task has its keys); a
    ConfigError names the keys, their values and what fits."""
    if _get(cfg, "model.arch") is None:
        return
    enc = _encoder(cfg)
    if enc["size"] is not None and enc["size"] % enc["patch_size"]:
        raise ConfigError(f"model.img_size={enc['size']} is not a multiple of the patch size {enc['patch_size']} "
                          f"(model.arch={cfg.model.arch}, model.patch_size)")
    for key in ("model.global_blocks", "model.out_indices"):  # det: global attention; seg: blocks feeding the pyramid
        blocks = _get(cfg, key)
        if blocks and not all(0 <= int(b) < enc["depth"] for b in blocks):
            raise ConfigError(f"{key}={list(blocks)}: the encoder has blocks 0..{enc['depth'] - 1} "
                              f"(model.arch={cfg.model.arch}, depth {enc['depth']})")
    anchors, factors = _get(cfg, "model.anchor_sizes"), _get(cfg, "model.scale_factors")
    if anchors is not None and factors is not None and len(anchors) != len(factors) + 1:
        raise ConfigError(f"model.anchor_sizes has {len(anchors)} sizes but the pyramid has {len(factors) + 1} levels "
                          f"(model.scale_factors {list(factors)} + the max-pool level): give one size per level")
    names, num_classes = _get(cfg, "data.class_names"), _get(cfg, "model.num_classes")
    if names and num_classes is not None and len(names) != num_classes:
        raise ConfigError(f"data.class_names has {len(names)} names but model.num_classes is {num_classes}")
    mixing = _get(cfg, "aug.mixup") or _get(cfg, "aug.cutmix") or _get(cfg, "aug.cutmix_minmax")
    if mixing and int(cfg.train.batch_size) % 2:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size}: Mixup/CutMix mix pairs of images in a batch; "
                          f"use an even batch, or aug.mixup=0 aug.cutmix=0")


def load_config(path: Union[str, os.PathLike], overrides: Iterable[str] = ()) -> DictConfig:
    """Load `path` with its chain of `_base_` files, apply `overrides` ('a.b=1' strings) and check the rules between
    keys."""
    cfg = _load(path, overrides)
    check_rules(cfg)
    return cfg


def _load(path: Union[str, os.PathLike], overrides: Iterable[str] = ()) -> DictConfig:
    path = Path(path)
    for known in (CONFIG_ROOT / path, CONFIG_ROOT.parent / path):  # 'cls/demo.yaml' or 'configs/cls/demo.yaml'
        if not path.is_file() and known.is_file():
            path = known
    cfg = _read_yaml(path)
    base_name = cfg.pop("_base_", None)
    if base_name is not None:
        base = _load(path.parent / str(base_name))
        # A derived file may add whole new sections (a task base adds model:/data:) but inside a section that the
        # base has, it only overrides: a misspelt key fails here instead of being silently ignored.
        new_sections = {k: v for k, v in cfg.items() if k not in base}
        cfg = _merge_strict(OmegaConf.merge(base, new_sections), cfg, str(path))
    return apply_overrides(cfg, overrides)


def apply_overrides(cfg: DictConfig, overrides: Iterable[str]) -> DictConfig:
    overrides = list(overrides)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"command line: override '{item}' is not of the form key=value")
    if not overrides:
        return cfg
    typed_as = dict(item.split("=", 1) for item in overrides)
    for item in overrides:  # one by one: together, `train=3 train.lr=1` would drop train=3 unchecked
        cfg = _merge_strict(cfg, OmegaConf.from_dotlist([item]), "command line", typed_as)
    return cfg


def save_config(cfg: DictConfig, path: Union[str, os.PathLike]) -> None:
    write_text(path, OmegaConf.to_yaml(cfg, resolve=True))


def to_dict(cfg: Optional[DictConfig]) -> dict:
    return {} if cfg is None else OmegaConf.to_container(cfg, resolve=True)
