"""Imports run downward (DESIGN.md): `maetransfer` never imports `pretrain` (the tools resolve the demo encoder), the
checkpoint reader and its format modules import nothing above them but the file writer and the size table (released
names are resolved by the zoo, which sits above the reader), and no tool or benchmark that the installed package
serves edits sys.path. Read from the source with Python's own parser, function-level imports included. `--help` of
every tool answers without importing torch."""
import ast
import subprocess
import sys
import time
from pathlib import Path

import pytest

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
    allowed = ("maetransfer.checkpoint", "maetransfer.models", "maetransfer.errors", "maetransfer.files",
               "maetransfer.sizes")
    offenders = {str(path.relative_to(ROOT)): name for path in (ROOT / "maetransfer/checkpoint").glob("*.py")
                 for name in _imports(path) if name.startswith("maetransfer") and not name.startswith(allowed)}
    assert offenders == {}


def test_tools_use_the_installed_package_without_sys_path_edits():
    """Except a benchmark that imports another benchmark's helpers (the benchmarks are no installed package)."""
    edits = [str(path.relative_to(ROOT)) for folder in ("tools", "benchmarks") for path in (ROOT / folder).glob("*.py")
             if "sys.path" in path.read_text()
             and not any(name.split(".")[0] == "benchmarks" for name in _imports(path))]
    assert edits == []


TOOLS = sorted((ROOT / "tools").glob("*.py"))


@pytest.mark.parametrize("tool", TOOLS, ids=[t.stem for t in TOOLS])
def test_help_answers_without_importing_torch(tool):
    """`--help` parses the command line before anything heavy is imported: no torch in the process that prints it,
    and well under the seconds torch takes to import."""
    probe = ("import runpy, sys\n"
             f"sys.argv = [{str(tool)!r}, '--help']\n"
             "try:\n"
             f"    runpy.run_path({str(tool)!r}, run_name='__main__')\n"
             "except SystemExit as exit:\n"
             "    assert exit.code in (0, None), exit.code\n"
             "heavy = sorted(m for m in ('torch', 'torchvision', 'timm', 'transformers') if m in sys.modules)\n"
             "print('heavy modules:', heavy)\n")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - start
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout and out.stdout.rstrip().endswith("heavy modules: []"), out.stdout[-300:]
    assert elapsed < 5, elapsed


def test_the_converters_formats_are_the_checkpoint_writers():
    import runpy

    from maetransfer.checkpoint import WRITE_FORMATS

    assert runpy.run_path(str(ROOT / "tools/convert_checkpoint.py"))["WRITE_FORMATS"] == WRITE_FORMATS


def test_no_tool_shadows_a_package():
    """Python puts a script's folder first on sys.path: a tools/<name>.py named like a package would be imported
    instead of it."""
    packages = {path.parent.name for path in ROOT.glob("*/__init__.py")}
    assert packages >= {"maetransfer", "pretrain"}
    assert {path.stem for path in (ROOT / "tools").glob("*.py")} & packages == set()
