"""Every command shown in README.md and docs/*.md runs: each `tools/` or `benchmarks/` script named in a ```bash block
exists and takes the options given; the training tools' command lines parse with the tool's own parser, their
--config file exists and every dotted override names a key of that config with a value of its type; every link between
pages reaches a file and, with an anchor, one of its headings."""
import re
import shlex
from pathlib import Path

import pytest

from maetransfer.cli import TOOL_DEFAULTS, tool_parser
from maetransfer.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SCRIPT = re.compile(r"(tools|benchmarks)/\w+\.(py|sbatch)")
SEPARATORS = {";", "&&", "||", "|"}


def _bash_lines(page: Path):
    """(line number, command line) of the page's ```bash blocks, continuation lines joined."""
    in_block, pending, start = False, "", 0
    for number, line in enumerate(page.read_text().splitlines(), 1):
        if line.strip().startswith("```"):
            in_block = line.strip() == "```bash" and not in_block
            continue
        if not in_block:
            continue
        start = start or number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield start, pending + line
        pending, start = "", 0


def _invocations():
    """(where, script, its arguments) for every script invocation in the docs."""
    found = []
    for page in PAGES:
        for number, line in _bash_lines(page):
            tokens = [t for t in shlex.split(line, comments=True) if t != "..."]
            cuts = [i for i, t in enumerate(tokens) if t in SEPARATORS] + [len(tokens)]
            start = 0
            for cut in cuts:
                segment, start = tokens[start:cut], cut + 1
                positions = [i for i, t in enumerate(segment) if SCRIPT.fullmatch(t)] + [len(segment)]
                for here, after in zip(positions, positions[1:]):
                    found.append((f"{page.name}:{number}", segment[here], segment[here + 1:after]))
    return found


INVOCATIONS = _invocations()


def _declared_options(script: Path):
    return set(re.findall(r"add_argument\(\s*\"(--[\w-]+)\"", script.read_text())) | {"--help"}


def test_the_docs_show_commands_of_every_tool():
    shown = {script for _, script, _ in INVOCATIONS}
    assert {f"tools/{tool}.py" for tool in TOOL_DEFAULTS} <= shown
    assert {"tools/submit.py", "tools/slurm_job.sbatch", "tools/convert_checkpoint.py"} <= shown


@pytest.mark.parametrize("where, script, args", INVOCATIONS, ids=[f"{w} {s}" for w, s, _ in INVOCATIONS])
def test_each_command_in_the_docs_names_a_script_options_and_keys_that_exist(where, script, args):
    path = ROOT / script
    assert path.is_file(), f"{where}: {script} does not exist"
    tool = path.stem
    if script.startswith("tools/") and tool in TOOL_DEFAULTS:
        demo_config, _ = TOOL_DEFAULTS[tool]
        parser = tool_parser("", demo_config, None if tool == "pretrain_mae" else "checkpoint")
        parser.exit = parser.error = lambda *a, **k: pytest.fail(f"{where}: {script} {' '.join(args)}: {a}")
        parsed = parser.parse_intermixed_args(args)
        try:
            load_config(parsed.config, parsed.overrides)
        except ConfigError as exc:
            pytest.fail(f"{where}: {exc}")
    elif path.suffix == ".py":
        # options up to the wrapped tool's path (submit.py) are the script's own
        own = _declared_options(path)
        unknown = [a.split("=")[0] for a in args if a.startswith("--") and a.split("=")[0] not in own]
        assert unknown == [], f"{where}: {script} has no option {unknown}"


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lstrip("#").strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _links():
    for page in PAGES:
        in_code = False
        for number, line in enumerate(page.read_text().splitlines(), 1):
            if line.strip().startswith("```"):
                in_code = not in_code
            if not in_code:
                for target in LINK.findall(line):
                    if not re.match(r"[a-z]+:", target):  # web addresses are not checked here
                        yield f"{page.name}:{number}", page, target


@pytest.mark.parametrize("where, page, target", list(_links()), ids=lambda v: v if isinstance(v, str) else "")
def test_links_between_pages_reach_a_file_and_its_heading(where, page, target):
    path, _, anchor = target.partition("#")
    file = (page.parent / path).resolve() if path else page
    assert file.exists(), f"{where}: {target}: no such file"
    if anchor and file.suffix == ".md":
        headings = {_anchor(line) for line in file.read_text().splitlines() if line.startswith("#")}
        assert anchor in headings, f"{where}: {target}: {file.name} has no heading with this anchor"
