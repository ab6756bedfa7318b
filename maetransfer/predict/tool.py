"""The work of tools/predict.py once its arguments are parsed: find the images, check the output folder before
anything is written, predict in batches with a progress bar, write each image's files as it is done and the summary
files at the end. An image that cannot be read is one warning line; the others are still predicted, and the run ends
with exit 1 and a line counting the unreadable ones."""
import argparse
import glob
import sys
import time
from pathlib import Path
from typing import List, Sequence, Tuple

from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS
from tqdm import tqdm

from ..cli import OutputClashError, check_writable_folder, prepare_output, refuse_earlier_outputs, run_tool
from ..data.images import DatasetError, MissingFileError
from ..engine import progress
from ..errors import InputError
from ..tasks import TASK_NAMES
from .base import Predictor, predictor_class, to_image

# (file, its name relative to the folder it was found in, or its file name when given directly)
Found = List[Tuple[Path, str]]


class UnreadableImagesError(InputError, RuntimeError):
    """Some input images could not be read (each was reported); the others were predicted."""


def _images_in(folder: Path) -> Tuple[Found, int]:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    images = [p for p in files if p.suffix.lower() in IMG_EXTENSIONS]
    if not images:
        content = f"it holds {len(files)} other files, e.g. {files[0].relative_to(folder)}" if files else "it is empty"
        raise DatasetError(f"{folder}: no image files ({' '.join(IMG_EXTENSIONS)}) found ({content})")
    return [(p, str(p.relative_to(folder))) for p in images], len(files) - len(images)


def find_images(specs: Sequence[str]) -> Tuple[Found, int]:
    """The images that image files, folders (searched recursively) and glob patterns name, each once, in the order
    given (sorted within a folder or pattern), and how many files in the folders and patterns were not images."""
    found: Found = []
    skipped = 0
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            images, others = _images_in(path)
        elif path.is_file():
            images, others = [(path, path.name)], 0
        elif glob.has_magic(spec):
            files = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
            images = [(p, p.name) for p in files if p.suffix.lower() in IMG_EXTENSIONS]
            others = len(files) - len(images)
            if not images:
                raise DatasetError(f"{spec}: the pattern matches no image file ({len(files)} other files)")
        else:
            raise MissingFileError(f"{spec}: no such file or folder")
        found += images
        skipped += others
    seen, unique = set(), []
    for path, name in found:
        if path.resolve() not in seen:
            seen.add(path.resolve())
            unique.append((path, name))
    return unique, skipped


def check_outputs(out: Path, found: Found, predictor: type, overwrite: bool) -> None:
    """Before anything is written: `out` can be a folder, no two images write the same file, no output would replace
    an input image, and (unless `overwrite`) no output file exists already."""
    check_writable_folder(out, "--output-dir")
    writer_of = {}
    for path, name in found:
        for file in predictor.files_of(name):
            if file in writer_of:
                raise OutputClashError(f"{writer_of[file]} and {path} would both be written as {out / file}: "
                                       "predict them in separate runs (or rename one)")
            writer_of[file] = path
    for name in predictor.summary_files:
        writer_of[name] = None
    inputs = {path.resolve() for path, _ in found}
    clash = [file for file in writer_of if (out / file).resolve() in inputs]
    if clash:
        raise OutputClashError(f"{out / clash[0]} is an input image: choose another --output-dir")
    refuse_earlier_outputs(out, [file for file in writer_of if (out / file).exists()], "prediction", overwrite)


class _Images(Dataset):
    """(index, uint8 (3, H, W) image or None, the one-line reason it could not be read); `read` decodes a file."""

    def __init__(self, found: Found, read):
        self.found, self.read = found, read

    def __len__(self) -> int:
        return len(self.found)

    def __getitem__(self, index: int):
        try:
            return index, to_image(self.found[index][0], self.read), None
        except InputError as exc:
            return index, None, str(exc)


def predict_images(predictor: Predictor, found: Found, out: Path, batch_size: int, workers: int) -> List:
    """Predict every image of `found` and write its files under `out`; the summary files when all are done. Returns
    the records of the summary."""
    loader = DataLoader(_Images(found, predictor.read_image), batch_size=batch_size, num_workers=workers,
                        collate_fn=list)
    records, unreadable = [], 0
    with tqdm(total=len(found), desc="predict", unit="image", dynamic_ncols=True) as bar:
        for batch in loader:
            readable = [(index, image) for index, image, _ in batch if image is not None]
            for _, _, problem in batch:
                if problem is not None:
                    unreadable += 1
                    tqdm.write(f"warning: {problem}; skipped", file=sys.stderr)
            predictions = predictor.predict_tensors([image for _, image in readable]) if readable else []
            for (index, image), prediction in zip(readable, predictions):
                records += predictor.save(out, found[index][1], image, prediction, image_id=index + 1)
            bar.update(len(batch))
    if unreadable == len(found):
        raise UnreadableImagesError(f"none of the {len(found)} images could be read (each is named above)")
    predictor.save_summary(out, records)
    if unreadable:
        raise UnreadableImagesError(f"{unreadable} of the {len(found)} images could not be read (each is named "
                                    f"above); the other {len(found) - unreadable} were predicted into {out}")
    return records


def run(parser: argparse.ArgumentParser, args: argparse.Namespace, cfg, task: str) -> List:
    """tools/predict.py with parsed arguments and its loaded config of `task`; ends the program with one line (exit
    2 for the command line and the output folder, 1 for the images and the checkpoint) on bad input."""
    start = time.time()
    for option, value, wanted in (("--score-thresh", args.score_thresh, "det"), ("--topk", args.topk, "cls")):
        if value is not None and task != wanted:
            parser.exit(2, f"error: {option} applies to {TASK_NAMES[wanted]} recipes; {args.config} is a "
                           f"{TASK_NAMES[task]} recipe\n")
    task_predictor = predictor_class(task)
    found, skipped = run_tool(parser, lambda: find_images(args.inputs))
    if skipped:
        what = "files that are not images" if skipped > 1 else "file that is not an image"
        print(f"skipped {skipped} {what} (by the extension)")
    out = Path(args.output_dir)
    prepare_output(parser, lambda: check_outputs(out, found, task_predictor, args.overwrite))
    options = {"score_thresh": args.score_thresh} if args.score_thresh is not None else {}
    options.update({"topk": args.topk} if args.topk is not None else {})

    def predict():
        predictor = Predictor.from_config(cfg, args.checkpoint, args.device, args.amp, args.class_names,
                                          args.unsafe_load, **options)
        batch_size = args.batch_size or int(cfg.eval.get("batch_size", 1))
        return predict_images(predictor, found, out, batch_size, args.workers)

    records = run_tool(parser, predict)
    took = progress.format_duration(time.time() - start)
    print(f"{len(found)} image{'s' * (len(found) > 1)} predicted in {took}: pictures and "
          f"{', '.join(task_predictor.summary_files)} in {out}")
    return records

