"""YAML configs: a file may name a `_base_` file (relative path) that it overrides; the command line then overrides
with dotted `key=value` pairs. Keys are strict: an override of a key the config does not have is an error (a typo
must not silently train with the default). Only a new top-level section may be introduced by a derived file."""
import os
from pathlib import Path
from typing import Iterable, Optional, Union

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from .errors import InputError

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


def _merge_strict(base: DictConfig, override: DictConfig, source: str) -> DictConfig:
    OmegaConf.set_struct(base, True)
    try:
        return OmegaConf.merge(base, override)
    except ConfigKeyError as exc:
        key = getattr(exc, "full_key", None) or str(exc)
        raise ConfigError(f"{source}: unknown config key '{key}'") from None
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{source}: {' '.join(str(exc).split())}") from None


def load_config(path: Union[str, os.PathLike], overrides: Iterable[str] = ()) -> DictConfig:
    """Load `path` with its chain of `_base_` files, then apply `overrides` ('a.b=1' strings)."""
    path = Path(path)
    if not path.is_file() and (CONFIG_ROOT / path).is_file():
        path = CONFIG_ROOT / path
    cfg = _read_yaml(path)
    base_name = cfg.pop("_base_", None)
    if base_name is not None:
        base = load_config(path.parent / str(base_name))
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
    return _merge_strict(cfg, OmegaConf.from_dotlist(overrides), "command line")


def save_config(cfg: DictConfig, path: Union[str, os.PathLike]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    os.replace(tmp, path)


def to_dict(cfg: Optional[DictConfig]) -> dict:
    return {} if cfg is None else OmegaConf.to_container(cfg, resolve=True)
