"""The report: `report.md`, a self-contained `report.html` (pictures embedded as base64, no network needed) and
`report.json` (every number as the jobs' metrics.json gave it), all from one list of blocks.

Content: one table per task (a row per encoder and the paper's row, deltas to the paper and to the first encoder);
per suite row its training curves with the encoders overlaid, its worst and best classes, sample pictures; the
reconstructions of the pretraining runs the encoders came from; and each job's command, config, wall time and
machine, so that every number can be rerun."""
import base64
import html
import io
import json
import math
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..engine.progress import STAGE_TITLES, format_duration
from ..files import atomic_write, write_text
from ..tasks import TOOLS
from .results import (curves, metric_title, per_class, pretraining_folder, read_log, read_metrics,
                      reconstructions, samples)
from .runner import DONE, FAILED, NO_RECIPE, PENDING, SKIPPED, Job, read_record, wall_seconds
from .suite import Encoder, Suite

PER_CLASS_SHOWN = 5  # worst and best classes shown of each per-class result (all of them when there are few)
ENCODER_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


@dataclass
class JobView:
    """A job with what its record and output folder say."""
    job: Job
    record: Dict
    state: str
    metrics: Optional[Dict[str, Optional[float]]]

    @property
    def wall_s(self) -> float:
        return wall_seconds(self.record)

    def status(self) -> str:
        if self.state == DONE:
            return f"done in {format_duration(self.wall_s)}"
        if self.state == FAILED:
            return f"failed (exit {self.record.get('exit_code')}): {self.record.get('error') or 'see the log'}; " \
                   f"log `{self.record.get('log', '')}`"
        if self.state in (SKIPPED, NO_RECIPE):
            return self.job.skip_reason if self.state == SKIPPED else self.job.skip_reason.replace("no recipe: ", "")
        return self.state


# ---------------------------------------------------------------------------------------------------------------
# Blocks, written out as Markdown or HTML. Text may hold `code` and [links](relative/path).
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Para:
    text: str


@dataclass
class Table:
    header: Sequence[str]
    rows: List[Sequence[str]]


@dataclass
class Code:
    text: str


@dataclass
class Images:
    items: List[Tuple[Path, str]]  # (PNG file, caption)
    width: str = "100%"  # of the page, per picture, in the HTML


@dataclass
class Details:
    """Long text: folded in the HTML, a link to its file in the Markdown."""
    summary: str
    path: Path


def _fmt(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.2f}"


def _delta(value: Optional[float], base: Optional[float]) -> str:
    return "" if value is None or base is None else f"{value - base:+.2f}"


def _get(metrics: Optional[Dict], key: str) -> Optional[float]:
    return None if metrics is None else metrics.get(key)


def _curve_figure(views: List[JobView], encoders: List[Encoder], path: Path) -> Optional[Path]:
    """One small plot per logged scalar (loss parts, learning rate, evaluation metrics), the encoders overlaid."""
    from matplotlib.figure import Figure  # here: only a report with finished jobs draws
    from matplotlib.ticker import MaxNLocator

    series = {view.job.encoder.label: curves(read_log(view.job.output_dir)) for view in views}
    # training: the loss, its parts and the learning rate (not the tools' other statistics, such as sampled RoI
    # counts); evaluations: the loss and the metrics of the task's table (not counts such as eval/num_images)
    shown_evals = {"eval/loss", *(f"eval/{key.replace('.', '/')}" for key, _ in TOOLS[views[0].job.spec.tool].metrics)}
    keys = sorted({k for s in series.values() for k in s},
                  key=lambda k: (k.startswith("eval/"), k == "lr", k != "loss", k))
    keys = [k for k in keys if k == "lr" or ("loss" in k and not k.startswith("eval/") and not k.endswith("_median"))
            or k in shown_evals and any(len(s.get(k, [])) > 1 for s in series.values())]
    if not keys:
        return None
    cols = min(4, len(keys))
    rows = math.ceil(len(keys) / cols)
    figure = Figure(figsize=(3.6 * cols, 2.5 * rows), dpi=90, layout="constrained")
    colour = {e.label: ENCODER_COLOURS[i % len(ENCODER_COLOURS)] for i, e in enumerate(encoders)}
    for index, key in enumerate(keys):
        axes = figure.add_subplot(rows, cols, index + 1)
        for label, scalars in series.items():
            points = scalars.get(key, [])
            if points:
                axes.plot(*zip(*points), label=label, color=colour[label], linewidth=1.2,
                          marker="o" if len(points) < 15 else None, markersize=3)
        axes.set_title(key, fontsize=9)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.tick_params(labelsize=7)
        axes.grid(alpha=0.3)
        if key == "lr":
            axes.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        if index >= len(keys) - cols:
            axes.set_xlabel("iteration", fontsize=8)
    figure.axes[0].legend(fontsize=8)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))
    return path


def _per_class_table(views: List[JobView], name: str) -> Optional[Table]:
    """The classes of one per-class result, ordered by the first encoder's value: the worst and best few."""
    values = {view.job.encoder.label: per_class(view.job.spec.tool, view.job.output_dir).get(name, {})
              for view in views}
    labels = list(values)
    classes = list(dict.fromkeys(c for v in values.values() for c in v))
    if not classes:
        return None
    first = values[labels[0]]
    classes.sort(key=lambda c: (first.get(c) is None, first.get(c) or 0.0, c))
    shown: List[Optional[str]] = list(classes)
    if len(classes) > 2 * PER_CLASS_SHOWN:
        known = [c for c in classes if first.get(c) is not None]
        shown = [*known[:PER_CLASS_SHOWN], None, *known[-PER_CLASS_SHOWN:]]
    header = ["class", *labels, *[f"Δ {label} − {labels[0]}" for label in labels[1:]]]
    rows = []
    for c in shown:
        if c is None:
            rows.append([f"… {len(classes) - 2 * PER_CLASS_SHOWN} more", *[""] * (len(header) - 1)])
            continue
        rows.append([c, *[_fmt(values[label].get(c)) for label in labels],
                     *[_delta(values[label].get(c), first.get(c)) for label in labels[1:]]])
    return Table(header, rows)


def _machine_text(record: Dict) -> str:
    parts = record.get("parts") or []
    if not parts:
        return ""
    m = parts[-1].get("machine", {})
    gpus = ", ".join(m.get("gpus") or []) or "no GPU"
    threads = f", OMP_NUM_THREADS={m['omp_num_threads']}" if m.get("omp_num_threads") else ""
    slurm = f", Slurm job {m['slurm_job_id']}" if m.get("slurm_job_id") else ""
    return f"{m.get('host', '?')}: {m.get('cpu', '?')}, {m.get('cores', '?')} cores{threads}, {gpus}{slurm}"


def build(suite: Suite, encoders: List[Encoder], views: List[JobView], out: Path, command: str,
          data_roots: Dict[str, str]) -> list:
    """The report as blocks; figures are written to out/figures."""
    blocks: list = [Heading(1, f"Transfer report: {suite.title}")]
    if suite.description:
        blocks.append(Para(suite.description))
    counts: Dict[str, int] = {}
    for view in views:
        counts[view.state] = counts.get(view.state, 0) + 1
    total = sum(v.wall_s for v in views)
    blocks.append(Para(f"Made by `{command}` on {time.strftime('%Y-%m-%d %H:%M')}. Jobs: "
                       + ", ".join(f"{n} {state}" for state, n in counts.items())
                       + f"; {format_duration(total)} of job time."))
    missing = [k for k in suite.data_roots if k not in data_roots and any(
        v.job.spec.data == k and v.state == SKIPPED for v in views)]
    if missing:
        blocks.append(Para("Rows skipped for want of data; give their data roots to the report command to fill "
                           "them: " + ", ".join(f"`data.{k}=PATH` ({suite.data_roots[k]})" for k in missing) + "."))
    blocks.append(Table(["encoder", "train.init_checkpoint", "what it is"],
                        [[e.label, f"`{e.spec}`" if e.spec else "(empty)", e.description] for e in encoders]))

    blocks.append(Heading(2, "Results"))
    by_tool: Dict[str, List[str]] = {}
    for view in views:
        names = by_tool.setdefault(view.job.spec.tool, [])
        if view.job.spec.name not in names:
            names.append(view.job.spec.name)
    rows_of = {name: [v for v in views if v.job.spec.name == name] for names in by_tool.values() for name in names}
    for tool, names in by_tool.items():
        blocks += _task_table(tool, [rows_of[n] for n in names], encoders)

    blocks.append(Heading(2, "Details per row"))
    for names in by_tool.values():
        for name in names:
            blocks += _row_details(rows_of[name], encoders, out)

    recon = [(e, reconstructions(pretraining_folder(e))) for e in encoders]
    recon = [(e, figure) for e, figure in recon if figure]
    if recon:
        blocks.append(Heading(2, "MAE reconstructions"))
        blocks.append(Para("From the pretraining run each encoder came from: original, masked, reconstruction, "
                           "reconstruction with the visible patches pasted back."))
        blocks.append(Images([(figure, f"{e.label}: {figure}") for e, figure in recon], width="47%"))

    blocks.append(Heading(2, "Runs"))
    blocks.append(Para("Each job's command, run from the folder this report was made in, with its wall time and "
                       "machine. Run again, the report reads finished jobs and resumes stopped ones."))
    for view in views:
        blocks += _run_blocks(view)
    return blocks


def wrap_command(command: Sequence[str], width: int = 110) -> str:
    """A command line as a shell would take it, continued over lines of at most about `width` characters; an option
    stays on the line of its value."""
    words: List[str] = []
    for token in command:
        paired = words and words[-1].startswith("--") and " " not in words[-1] and "=" not in words[-1]
        if paired and not token.startswith("-"):
            words[-1] += " " + shlex.quote(token)
        else:
            words.append(shlex.quote(token))
    lines, line = [], ""
    for token in words:
        if line and len(line) + 1 + len(token) > width:
            lines.append(line + " \\")
            line = "    "
        line = f"{line} {token}" if line.strip() else line + token
    return "\n".join([*lines, line])


def _pretrained_first(log: Optional[str]) -> bool:
    """Whether the job's log announces the MAE pretraining stage (a transfer job that pretrained the demo encoder)."""
    try:
        return f"] {STAGE_TITLES['pretrain']}: " in Path(log).read_text(errors="replace") if log else False
    except OSError:
        return False


def _run_blocks(view: JobView) -> list:
    record, job = view.record, view.job
    blocks: list = [Heading(4, f"{job.id}: {view.status() if view.state != DONE else DONE}"
                               + (f", {format_duration(view.wall_s)}" if view.wall_s else ""))]
    facts = []
    machine = _machine_text(record)
    if machine:
        facts.append(f"machine {machine}")
    if len(record.get("parts") or []) > 1:
        facts.append(f"ran in {len(record['parts'])} parts (resumed)")
    if _pretrained_first(record.get("log")):
        facts.append("its time includes pretraining the demo encoder, which the jobs after it reuse")
    files = [f"[{name}]({path})" for name, path in (("output folder", job.output_dir), ("log", record.get("log")),
                                                      ("config.yaml", job.output_dir / "config.yaml"))
             if path and Path(path).exists()]
    blocks.append(Para("; ".join([*facts, " · ".join(files)]) if facts or files else "not run yet"))
    blocks.append(Code(wrap_command(job.display_command())))
    if (job.output_dir / "config.yaml").is_file():
        blocks.append(Details(f"{job.id}: config.yaml", job.output_dir / "config.yaml"))
    return blocks


def _task_table(tool: str, rows: List[List[JobView]], encoders: List[Encoder]) -> list:
    task = TOOLS[tool]
    first = encoders[0].label
    has_paper = any(views[0].job.spec.reference for views in rows)
    header = ["row", "encoder", *[title for _, title in task.metrics]]
    header += [f"Δ {metric_title(tool, k)} to paper" for k in task.headline] if has_paper else []
    header += [f"Δ {metric_title(tool, k)} to {first}" for k in task.headline] if len(encoders) > 1 else []
    header.append("status")
    table = []
    for views in rows:
        spec = views[0].job.spec
        reference = spec.reference
        base = next((v.metrics for v in views if v.job.encoder.label == first), None)
        if reference:
            cells = [_fmt(reference.values.get(k)) if k in reference.values else "" for k, _ in task.metrics]
            table.append([spec.title, f"paper ({reference.source})", *cells,
                          *[""] * (len(header) - 2 - len(cells))])
        for i, view in enumerate(views):
            cells = [_fmt(_get(view.metrics, k)) if view.metrics else "" for k, _ in task.metrics]
            paper = [_delta(_get(view.metrics, k), reference.values.get(k) if reference else None)
                     for k in task.headline] if has_paper else []
            others = [_delta(_get(view.metrics, k), _get(base, k)) if i else "" for k in task.headline] \
                if len(encoders) > 1 else []
            table.append([spec.title if i == 0 and not reference else "", view.job.encoder.label, *cells, *paper,
                          *others, view.status()])
    blocks = [Heading(3, task.title), Table(header, table)]
    notes = [f"{views[0].job.spec.title}: {views[0].job.spec.note}" for views in rows if views[0].job.spec.note]
    if notes:
        blocks.append(Para(" ".join(notes)))
    return blocks


def _row_details(views: List[JobView], encoders: List[Encoder], out: Path) -> list:
    spec = views[0].job.spec
    blocks: list = [Heading(3, spec.title)]
    blocks.append(Para(f"`tools/{spec.tool}.py` with the recipe:"))
    blocks.append(Code(wrap_command([spec.config, *spec.overrides])))
    finished = [v for v in views if v.state not in (SKIPPED, NO_RECIPE, PENDING)
                and (v.job.output_dir / "log.jsonl").is_file()]
    if not finished:
        blocks.append(Para("No run yet: " + "; ".join(f"{v.job.encoder.label}: {v.status()}" for v in views) + "."))
        return blocks
    figure = _curve_figure(finished, encoders, out / "figures" / f"{spec.name}_curves.png")
    if figure:
        blocks.append(Para("Training curves from each job's `log.jsonl` (loss parts, learning rate, and evaluation "
                           "metrics logged more than once), encoders overlaid:"))
        blocks.append(Images([(figure, f"{spec.title}: training curves")]))
    done = [v for v in finished if v.state == DONE]
    names = list(dict.fromkeys(n for v in done for n in per_class(spec.tool, v.job.output_dir)))
    for name in names:
        table = _per_class_table(done, name)
        if table:
            blocks.append(Para(f"{name[0].upper()}{name[1:]}, ordered by {done[0].job.encoder.label}'s value"
                               + (f" (its worst and best {PER_CLASS_SHOWN})" if len(table.rows) > 2 * PER_CLASS_SHOWN
                                  else "") + ":"))
            blocks.append(table)
    pictures = [(p, f"{v.job.encoder.label}: {p.name}") for v in done for p in samples(spec.tool, v.job.output_dir)]
    if pictures:
        blocks.append(Para("Sample results:"))
        blocks.append(Images(pictures, width=f"{max(22, 94 // len(pictures))}%"))  # side by side, unless many
    return blocks


# ---------------------------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------------------------
def _relative(path: Path, out: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(out.resolve()))
    except ValueError:
        return str(Path(path).resolve())


_LINK = re.compile(r"\[([^\]]*)\]\(([^)]*)\)")


def _md_text(text: str, out: Path) -> str:
    """Links to files made relative to the report folder, where report.md is."""
    return _LINK.sub(lambda m: f"[{m.group(1)}]({_relative(Path(m.group(2)), out)})", text)


def _md_cell(text: str, out: Path) -> str:
    return _md_text(text, out).replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: list, out: Path) -> str:
    lines: List[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            lines += [f"{'#' * block.level} {block.text}", ""]
        elif isinstance(block, Para):
            lines += [_md_text(block.text, out), ""]
        elif isinstance(block, Table):
            lines.append("| " + " | ".join(_md_cell(h, out) for h in block.header) + " |")
            lines.append("|" + "---|" * len(block.header))
            lines += ["| " + " | ".join(_md_cell(c, out) for c in row) + " |" for row in block.rows]
            lines.append("")
        elif isinstance(block, Code):
            lines += ["```", block.text, "```", ""]
        elif isinstance(block, Images):
            lines += [f"![{caption}]({_relative(path, out)})" for path, caption in block.items] + [""]
        elif isinstance(block, Details):
            continue  # the Markdown links the file with the job's other files
    return "\n".join(lines)


_INLINE = re.compile(r"`([^`]*)`|" + _LINK.pattern)


def _html_text(text: str, out: Path) -> str:
    """Escape, with `code` and [links](path) as in the Markdown (paths relative to the report folder)."""
    pieces, end = [], 0
    for match in _INLINE.finditer(text):
        pieces.append(html.escape(text[end:match.start()]))
        if match.group(1) is not None:
            pieces.append(f"<code>{html.escape(match.group(1))}</code>")
        else:
            href = _relative(Path(match.group(3)), out) if match.group(3) else ""
            pieces.append(f'<a href="{html.escape(href)}">{html.escape(match.group(2))}</a>')
        end = match.end()
    pieces.append(html.escape(text[end:]))
    return "".join(pieces)


_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.2em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; } tr:nth-child(even) td { background: #fafafa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.pos { color: #17752b; } td.neg { color: #b3261e; }
code { background: #f3f3f3; padding: 0 3px; font-size: 12px; word-break: break-all; }
figure { display: inline-block; margin: 0 0.8% 1em 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #ddd; image-rendering: pixelated; }
figcaption { font-size: 12px; color: #555; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; font-size: 12px; }
h1 { border-bottom: 2px solid #ddd; } h2 { border-bottom: 1px solid #eee; margin-top: 1.6em; }
"""
_NUMBER = re.compile(r"[+-]?\d+\.\d+")


def _cell_class(text: str) -> str:
    if not _NUMBER.fullmatch(text):
        return ""
    sign = "" if float(text) == 0 else " pos" if text.startswith("+") else " neg" if text.startswith("-") else ""
    return f' class="num{sign}"'


def _png_data(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def to_html(blocks: list, out: Path) -> str:
    title = next((b.text for b in blocks if isinstance(b, Heading)), "Transfer report")
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"]
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"<h{block.level}>{_html_text(block.text, out)}</h{block.level}>")
        elif isinstance(block, Para):
            parts.append(f"<p>{_html_text(block.text, out)}</p>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{_html_text(h, out)}</th>" for h in block.header)
            body = "".join("<tr>" + "".join(f"<td{_cell_class(c)}>{_html_text(c, out)}</td>" for c in row) + "</tr>"
                           for row in block.rows)
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif isinstance(block, Code):
            parts.append(f"<pre>{html.escape(block.text)}</pre>")
        elif isinstance(block, Images):
            parts += [f'<figure style="max-width: {block.width}"><img src="{_png_data(path)}" '
                      f'alt="{html.escape(caption)}">'
                      f"<figcaption>{html.escape(caption)}</figcaption></figure>" for path, caption in block.items]
        elif isinstance(block, Details):
            parts.append(f"<details><summary>{html.escape(block.summary)}</summary>"
                         f"<pre>{html.escape(block.path.read_text())}</pre></details>")
    parts.append("</body></html>")
    return "\n".join(parts)


def to_json(suite: Suite, encoders: List[Encoder], views: List[JobView]) -> Dict:
    """Every job's state and metrics exactly as its metrics.json holds them (flattened), with the published values."""
    return {"suite": suite.name, "encoders": {e.label: e.spec for e in encoders},
            "jobs": [{"encoder": v.job.encoder.label, "job": v.job.spec.name, "tool": v.job.spec.tool,
                      "state": v.state, "metrics": v.metrics, "wall_s": v.wall_s,
                      "paper": v.job.spec.reference.values if v.job.spec.reference else None,
                      "command": shlex.join(v.job.display_command()), "output_dir": str(v.job.output_dir)}
                     for v in views]}


def write_report(suite: Suite, encoders: List[Encoder], views: List[JobView], out: Path, command: str,
                 data_roots: Dict[str, str]) -> Path:
    """report.md, report.html and report.json in `out`; returns the HTML's path."""
    blocks = build(suite, encoders, views, out, command, data_roots)
    write_text(out / "report.md", to_markdown(blocks, out))
    write_text(out / "report.json", json.dumps(to_json(suite, encoders, views), indent=1) + "\n")
    return write_text(out / "report.html", to_html(blocks, out))


def collect(jobs: List[Job], state_of) -> List[JobView]:
    """Views of `jobs`: `state_of(job, record)` gives the state; metrics are read for finished jobs only."""
    views = []
    for job in jobs:
        record = read_record(job)
        state = state_of(job, record)
        views.append(JobView(job, record, state, read_metrics(job.output_dir) if state == DONE else None))
    return views
