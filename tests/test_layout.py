"""Imports run downward (DESIGN.md): `maetransfer` never imports `pretrain` (the tools resolve the demo encoder), the
checkpoint reader and its format modules import nothing above them (released names are resolved by the zoo, which
sits above the reader), and no tool or benchmark that the installed package serves edits sys.path. Read from the
source with Python's own parser, function-level imports included."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path):
    """The absolute module names `path` imports (relative imports resolved against its package)."""
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = list(package[:len(package) - node.level + 1]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names += [module] if node.module else [f"{module}.{alias.name}" for alias in node.names]
    return names


def test_maetransfer_never_imports_pretrain():
    offenders = {str(path.relative_to(ROOT)): name for path in (ROOT / "maetransfer").rglob("*.py")
                 for name in _imports(path) if name == "pretrain" or name.startswith("pretrain.")}
    assert offenders == {}


def test_the_checkpoint_reader_depends_on_nothing_above_it():
    allowed = ("maetransfer.checkpoint", "maetransfer.models", "maetransfer.errors")
    offenders = {str(path.relative_to(ROOT)): name for path in (ROOT / "maetransfer/checkpoint").glob("*.py")
                 for name in _imports(path) if name.startswith("maetransfer") and not name.startswith(allowed)}
    assert offenders == {}


def test_tools_use_the_installed_package_without_sys_path_edits():
    """Except a benchmark that imports another benchmark's helpers (the benchmarks are no installed package)."""
    edits = [str(path.relative_to(ROOT)) for folder in ("tools", "benchmarks") for path in (ROOT / folder).glob("*.py")
             if "sys.path.insert" in path.read_text()
             and not any(name.split(".")[0] == "benchmarks" for name in _imports(path))]
    assert edits == []
