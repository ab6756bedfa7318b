"""The shipped recipes, one line each: `python -m maetransfer.configs` lists every config under configs/ with its
task, model, data and the published number it should reproduce (configs/report/paper_results.yaml)."""
import argparse
from pathlib import Path
from typing import Dict, List

from omegaconf import OmegaConf

from .config import CONFIG_ROOT, load_config
from .tasks import TASKS

PAPER_RESULTS = CONFIG_ROOT / "report" / "paper_results.yaml"


def recipes() -> List[Path]:
    """Every recipe: the task folders' YAML files but their base.yaml (the schema and defaults)."""
    return sorted(path for name in TASKS for path in (CONFIG_ROOT / name).glob("*.yaml") if path.name != "base.yaml")


def published() -> Dict[str, str]:
    """'configs/<task>/<name>.yaml' -> its published numbers, as 'top1 83.6 (MAE paper Table 3)'."""
    table = OmegaConf.to_container(OmegaConf.load(PAPER_RESULTS))
    return {key: " ".join(f"{k} {v}" for k, v in entry.items() if k != "source") + f" ({entry['source']})"
            for key, entry in table.items()}


def rows() -> List[List[str]]:
    numbers = published()
    out = []
    for path in recipes():
        cfg = load_config(path)
        key = str(path.relative_to(CONFIG_ROOT.parent))
        data = cfg.data.root + (f" ({cfg.data.format})" if "format" in cfg.data else "")
        out.append([key, cfg.task, cfg.model.arch, data, numbers.get(key, "-")])
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m maetransfer.configs", description=__doc__)
    parser.add_argument("--task", choices=list(TASKS), help="only this task's recipes")
    args = parser.parse_args(argv)
    table = [["recipe", "task", "model", "data.root", "published"]]
    table += [row for row in rows() if args.task in (None, row[1])]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])


if __name__ == "__main__":
    main()
