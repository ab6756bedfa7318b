"""Released checkpoints by name: where each file is published, how it is checked, and the number it should reproduce.

Every tool that takes a checkpoint path also takes a name listed here (`--checkpoint mae_finetuned_vit_base`,
`train.init_checkpoint=mae_pretrain_vit_large`) or a Hugging Face hub id (`facebook/vit-mae-base`): the tools turn
each such spec into a file with `resolve` before anything reads it (the checkpoint reader only reads files). Files
are downloaded once into torch's hub cache (`cache_dir()`), resuming a partial file, checked against the published
digest prefix and for the registered format, ViT size and contents, then renamed into place; a file found in the
cache (copied there by hand) is checked the same way at its first use. Hub ids go through
huggingface_hub's own cache. Nothing is fetched at
import. `python -m maetransfer.zoo` lists the names with their published numbers and the commands that reproduce them;
`python -m maetransfer.zoo NAME ...` downloads and prints the local paths.
"""
import argparse
import hashlib
import http.client
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

import torch
from filelock import FileLock
from tqdm import tqdm

from .checkpoint import CheckpointError, LoadedCheckpoint, encoder_arch, is_detector, read_checkpoint
from .models import vit_size
from .tasks import TASKS

# What a release holds: a description and the test a parsed checkpoint must pass.
CONTENTS: Dict[str, tuple] = {
    "encoder": ("a ViT encoder", lambda ckpt: True),
    "encoder+decoder": ("an MAE encoder with its decoder", lambda ckpt: bool(ckpt.decoder)),
    "classifier": ("a classifier (encoder + fc_norm/head)", lambda ckpt: bool(ckpt.head)),
    "detector": ("a whole Mask R-CNN", lambda ckpt: is_detector(ckpt.other)),
    "segmentor": ("a UperNet segmentor", lambda ckpt: any(k.startswith("decode_head.") for k in ckpt.other)),
}


@dataclass(frozen=True)
class Release:
    """One released checkpoint. `url` (a file) or `hub_repo` (a Hugging Face repository) says where it is."""
    name: str
    what: str                 # one line for the listing
    format: str               # what maetransfer.checkpoint must read it as (mae, timm, hf, detectron2, mmseg)
    arch: str                 # ViT size, a key of maetransfer.models.VIT_SIZES
    contents: str             # a key of CONTENTS
    command: str              # the command that evaluates (or, for encoders, fine-tunes) it
    result: str = ""          # the published number that command should reproduce, and where it is published
    url: str = ""
    hub_repo: str = ""
    checksum: str = ""        # 'md5:8cad7c': a prefix of the file's digest, as its publisher gives it
    patch_size: Optional[int] = None  # when it differs from the size's own (ViTDet runs ViT-H at patch 16)


_MAE = "https://dl.fbaipublicfiles.com/mae"
_TOOL = {name: f"tools/{spec.tool}.py" for name, spec in TASKS.items()}  # the task table's tools
_FT_CMD = f"torchrun --nproc_per_node 8 {_TOOL['cls']} --config configs/cls/imagenet_vit_{{size}}.yaml " \
          "data.root=/data/imagenet train.init_checkpoint={name}"
_VIS_CMD = "python tools/visualize_mae.py {name} photo.jpg --output recon.png"
# Per size: md5 prefix of mae_pretrain_* (MAE README), IN-1k top-1 after fine-tuning (paper), md5 prefix of
# mae_finetuned_* and the top-1 / top-5 its evaluation prints (FINETUNE.md).
_MAE_SIZES = {"base": ("8cad7c", "83.6", "1b25e9", "83.664 / 96.530"),
              "large": ("b8b06e", "85.9", "51f550", "85.952 / 97.570"),
              "huge": ("9bdbb0", "86.9", "2541f2", "86.928 / 98.088")}
# detectron2's ViTDet model zoo: config name, size, url tail (its file name holds its md5 prefix), box / mask AP.
_VITDET = (
    ("mask_rcnn_vitdet_b_100ep", "base", "mask_rcnn_vitdet_b/f325346929/model_final_61ccd1.pkl", "51.6 / 45.9"),
    ("mask_rcnn_vitdet_l_100ep", "large", "mask_rcnn_vitdet_l/f325599698/model_final_6146ed.pkl", "55.5 / 49.2"),
    ("mask_rcnn_vitdet_h_75ep", "huge", "mask_rcnn_vitdet_h/f329145471/model_final_7224f1.pkl", "56.7 / 50.2"))
_MMSEG_UPERNET = ("https://download.openmmlab.com/mmsegmentation/v0.5/mae/"
                  "upernet_mae-base_fp16_8x2_512x512_160k_ade20k/"
                  "upernet_mae-base_fp16_8x2_512x512_160k_ade20k_20220426_174752-f92a2975.pth")
_TIMM_NAMES = {"base": "vit_base_patch16_224.mae", "large": "vit_large_patch16_224.mae",
               "huge": "vit_huge_patch14_224.mae"}


def _label(size: str) -> str:
    return f"ViT-{size[0].upper()}"


def _finetuned_result(size: str) -> str:
    return f"ImageNet-1k top-1 {_MAE_SIZES[size][1]} after fine-tuning (MAE paper)"


def _releases():
    for size, (md5, _, _, _) in _MAE_SIZES.items():
        name = f"mae_pretrain_vit_{size}"
        yield Release(name, f"MAE {_label(size)} encoder, 1600 epochs, norm-pix targets (official release)", "mae",
                      f"vit_{size}", "encoder", _FT_CMD.format(size=size, name=name), _finetuned_result(size),
                      url=f"{_MAE}/pretrain/{name}.pth", checksum=f"md5:{md5}")
    for size in _MAE_SIZES:
        name = f"mae_pretrain_vit_{size}_full"
        yield Release(name, f"MAE {_label(size)} encoder + decoder of mae_pretrain_vit_{size} (predicts normalised "
                      "patches)", "mae", f"vit_{size}", "encoder+decoder", _VIS_CMD.format(name=name) + " --norm-pix",
                      url=f"{_MAE}/pretrain/{name}.pth")
    for size in (*_MAE_SIZES, "large_ganloss"):
        name = f"mae_visualize_vit_{size}"
        extra = " and an extra GAN loss" if size.endswith("ganloss") else ""
        yield Release(name, f"MAE {_label(size)} encoder + decoder trained on raw pixels{extra} (the official "
                      "visualisation demo's)", "mae", f"vit_{size.split('_')[0]}", "encoder+decoder",
                      _VIS_CMD.format(name=name), url=f"{_MAE}/visualize/{name}.pth")
    for size, (_, _, md5, result) in _MAE_SIZES.items():
        name = f"mae_finetuned_vit_{size}"
        yield Release(name, f"MAE {_label(size)} fine-tuned on ImageNet-1k (official release)", "mae", f"vit_{size}",
                      "classifier", f"python {_TOOL['cls']} --config configs/cls/imagenet_vit_{size}.yaml "
                      f"--eval-only --checkpoint {name} data.root=/data/imagenet",
                      f"ImageNet-1k val top-1 / top-5 {result} (MAE FINETUNE.md)",
                      url=f"{_MAE}/finetune/{name}.pth", checksum=f"md5:{md5}")
    for size in _MAE_SIZES:
        name = f"facebook/vit-mae-{size}"
        yield Release(name, f"Hugging Face copy of the MAE {_label(size)} (ViTMAEForPreTraining: encoder + decoder)",
                      "hf", f"vit_{size}", "encoder+decoder", _VIS_CMD.format(name=name), hub_repo=name)
    for size, name in _TIMM_NAMES.items():
        yield Release(name, f"timm's copy of mae_pretrain_vit_{size} (encoder)", "timm", f"vit_{size}", "encoder",
                      _FT_CMD.format(size=size, name=name), _finetuned_result(size), hub_repo=f"timm/{name}")
    for name, size, tail, box_mask in _VITDET:
        yield Release(name, f"detectron2 ViTDet Mask R-CNN, MAE {_label(size)} (detectron2 model zoo)", "detectron2",
                      f"vit_{size}", "detector", f"python {_TOOL['det']} --config "
                      f"configs/det/mask_rcnn_vit_{size}_coco.yaml --eval-only --checkpoint {name} "
                      "data.root=/data/coco",
                      f"COCO val2017 box / mask AP {box_mask} (detectron2 ViTDet model zoo)",
                      url=f"https://dl.fbaipublicfiles.com/detectron2/ViTDet/COCO/{tail}",
                      checksum="md5:" + tail[-10:-4], patch_size=16)
    name = "upernet_mae-base_fp16_8x2_512x512_160k_ade20k"
    yield Release(name, "mmsegmentation UperNet, MAE ViT-B, ADE20K 160k iterations (mmseg model zoo)", "mmseg",
                  "vit_base", "segmentor",
                  f"python {_TOOL['seg']} --config configs/seg/upernet_vit_base_ade20k.yaml --eval-only "
                  f"--checkpoint {name} data.root=/data/ADEChallengeData2016",
                  "ADE20K val mIoU 48.13; 48.70 with eval.multi_scale=true eval.flip=true (mmseg configs/mae)",
                  url=_MMSEG_UPERNET, checksum="sha256:f92a2975")  # mmseg names its files by sha256 prefix


RELEASES: Dict[str, Release] = {r.name: r for r in _releases()}


def cache_dir() -> Path:
    """torch's hub cache, `$TORCH_HOME/hub/checkpoints` (TORCH_HOME defaults to `$XDG_CACHE_HOME/torch`, that is
    ~/.cache/torch): the folder and file names of torch.hub.load_state_dict_from_url, so its downloads count too."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve(spec: str, unsafe: bool = False) -> Path:
    """The file (or Hugging Face folder) of a checkpoint spec: an existing path as it is, a released name or a hub id
    downloaded and checked on first use; CheckpointError (one line) for anything else."""
    path = Path(spec)
    if path.exists():
        return path
    fetched = fetch(spec, unsafe)
    if fetched is None:
        raise CheckpointError(f"{spec}: checkpoint not found (no such file or folder, and not a name that "
                              f"`python -m maetransfer.zoo` lists)")
    return fetched


def fetch(spec: str, unsafe: bool = False) -> Optional[Path]:
    """The local path of a registered name or a Hugging Face hub id, downloaded and checked on first use; None when
    `spec` is neither (then it is only a missing file). Failures raise CheckpointError with one line."""
    release = RELEASES.get(spec)
    if release is not None and release.url:
        return _fetch_file(release, unsafe)
    if release is not None or _is_hub_id(spec):
        return _fetch_hub(spec, release.hub_repo if release else spec, release, unsafe)
    return None


# ---------------------------------------------------------------------------------------------------------------
# Files on a web server
# ---------------------------------------------------------------------------------------------------------------
# Written here rather than with torch.hub.download_url_to_file, which has the progress bar and the atomic rename but
# restarts an interrupted download from zero (the ViT-H files are GBs) and checks sha256 only (MAE and detectron2
# publish md5 prefixes).
_TIMEOUT_S = 60
_CHUNK = 1 << 20
_ATTEMPTS = 3  # a transfer that breaks off is resumed this many times in one call
# urllib wraps most failures in URLError; a connection reset or a timeout while waiting for the response comes raw
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)


def _fetch_file(release: Release, unsafe: bool) -> Path:
    dest = cache_dir() / release.url.rsplit("/", 1)[-1]
    if dest.is_file():
        _check_cached(release, dest, unsafe)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{dest}.lock"):  # processes that ask at once (DDP ranks) download once; the others wait for it
        if not dest.is_file():
            partial = dest.with_name(dest.name + ".partial")
            _download(release, partial, dest)
            problem = _problem(release, partial, unsafe)
            if problem:
                partial.unlink()
                raise CheckpointError(f"{release.name}: the file downloaded from {release.url} {problem}; it was "
                                      f"deleted, run again to download it anew")
            partial.replace(dest)
            _stamp_checked(dest)
    return dest


def _check_cached(release: Release, path: Path, unsafe: bool) -> None:
    """A file found in the cache under a released name may have been put there by hand or by a broken copy: it is
    checked as a download is (digest, then structure) the first time it is used. A stamp of the size and time it was
    checked at spares hashing gigabytes again on every later use; a file changed since is checked again."""
    stamp = path.with_name(path.name + ".checked")
    if stamp.is_file() and stamp.read_text() == _identity(path):
        return
    problem = _problem(release, path, unsafe)
    if problem:
        raise CheckpointError(f"{release.name}: {path} in the checkpoint cache {problem}; delete it to download the "
                              f"release anew, or pass the file by its path to use it as it is")
    _stamp_checked(path)


def _identity(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size} {stat.st_mtime_ns}"


def _stamp_checked(path: Path) -> None:
    try:
        path.with_name(path.name + ".checked").write_text(_identity(path))
    except OSError:  # a read-only shared cache: the file is checked again at its next use
        pass


def _download(release: Release, partial: Path, dest: Path) -> None:
    print(f"{release.name}: downloading {release.url} to {dest}")
    for _ in range(_ATTEMPTS):
        try:
            if _transfer(release.url, partial, release.name):
                return
        except _NETWORK_ERRORS as exc:  # refused, no route, DNS, 404, a reset before the response
            reason = exc if isinstance(exc, urllib.error.HTTPError) else getattr(exc, "reason", exc)
            raise CheckpointError(f"{release.name}: cannot download {release.url} ({reason}); without network, fetch "
                                  f"that URL by hand and save it as {dest}") from None
    have = partial.stat().st_size if partial.exists() else 0
    raise CheckpointError(f"{release.name}: the download of {release.url} broke off {_ATTEMPTS} times ({have} bytes "
                          f"kept in {partial}); run again to resume, or fetch the URL by hand and save it as {dest}")


def _transfer(url: str, partial: Path, label: str) -> bool:
    """One request appending to `partial` from its current size (an HTTP Range request); False when the transfer
    broke off or cannot continue the partial file (then it is resumed, or restarted, by the next attempt)."""
    start = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        response = urllib.request.urlopen(request, timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code != 416 or not start:
            raise
        # 416: nothing at or after `start`; complete if the server's size (Content-Range "bytes */N") is the partial's
        if exc.headers.get("Content-Range", "") == f"bytes */{start}":
            return True
        partial.unlink()
        return False
    with response:
        if start and response.status == 206 and not response.headers.get("Content-Range", "").startswith(
                f"bytes {start}-"):
            partial.unlink()  # a range other than the one asked for
            return False
        if response.status != 206:
            start = 0  # the server sends the whole file: start over
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        with open(partial, "ab" if start else "wb") as out, \
                tqdm(total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024, desc=label) as bar:
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except _NETWORK_ERRORS:  # reset or timed out mid-body: keep what arrived
                    return False
                if not chunk:
                    break
                out.write(chunk)
                bar.update(len(chunk))
    return total is None or partial.stat().st_size == total


def _problem(release: Release, path: Path, unsafe: bool) -> Optional[str]:
    """What is wrong with a fresh download (None if nothing): the published digest prefix first, then the structure:
    it must read as the registered format, ViT size and contents."""
    if release.checksum:
        algorithm, prefix = release.checksum.split(":")
        hasher = hashlib.new(algorithm)  # hashlib.file_digest would need Python 3.11
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(_CHUNK), b""):
                hasher.update(block)
        digest = hasher.hexdigest()
        if not digest.startswith(prefix):
            return f"has {algorithm} {digest}, not the published {prefix}...: a corrupt download or a changed file"
    try:
        ckpt = read_checkpoint(path, unsafe)
        return _structure_problem(release, ckpt, str(path))
    except CheckpointError as exc:
        return f"is not a readable {release.format} checkpoint ({exc})"


def _structure_problem(release: Release, ckpt: LoadedCheckpoint, source: str) -> Optional[str]:
    if ckpt.format != release.format:
        return f"reads as a {ckpt.format} checkpoint, not {release.format}"
    arch, size = encoder_arch(ckpt.encoder, source), vit_size(release.arch)
    found = (arch["embed_dim"], arch["depth"], arch["patch_size"])
    expected = (size["embed_dim"], size["depth"], release.patch_size or size["patch_size"])
    if found != expected:
        return "is a ViT with embed {}/depth {}/patch {}".format(*found) + \
            ", not {} (embed {}/depth {}/patch {})".format(release.arch, *expected)
    description, holds = CONTENTS[release.contents]
    if not holds(ckpt):
        return f"is not {description}"
    return None


# ---------------------------------------------------------------------------------------------------------------
# Hugging Face hub repositories (huggingface_hub comes with timm): its cache, resume and size checks
# ---------------------------------------------------------------------------------------------------------------
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_FILE_SUFFIXES = (".pth", ".pt", ".pkl", ".bin", ".safetensors", ".ckpt")
_HUB_WEIGHTS = ("*.safetensors*", "pytorch_model.bin*")  # one weight format, preferring safetensors


def _is_hub_id(spec: str) -> bool:
    """'owner/name' that is no file path: no checkpoint suffix, and 'owner' is not a local folder."""
    return bool(_HUB_ID.fullmatch(spec)) and not spec.endswith(_FILE_SUFFIXES) and not Path(spec).parent.exists()


def _fetch_hub(spec: str, repo: str, release: Optional[Release], unsafe: bool) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    def snapshot(local_only: bool) -> Optional[Path]:
        for weights in _HUB_WEIGHTS:
            folder = Path(snapshot_download(repo, allow_patterns=["config.json", weights],
                                            local_files_only=local_only))
            if any(folder.glob(weights)):
                return folder
        return None

    try:
        cached = snapshot(local_only=True)  # in the cache: no request at all
    except LocalEntryNotFoundError:
        cached = None
    if cached is not None:
        return cached
    try:
        folder = snapshot(local_only=False)
    except Exception as exc:  # offline, unknown repo, hub down: huggingface_hub's many errors, as one line
        detail = str(exc).strip().splitlines()[0].split(". ")[0][:160] if str(exc).strip() else ""
        raise CheckpointError(f"{spec}: not a local file or folder, and {repo} cannot be fetched from the Hugging "
                              f"Face hub ({type(exc).__name__}: {detail}); without network, download config.json and "
                              f"model.safetensors (or pytorch_model.bin) from https://huggingface.co/{repo} into a "
                              f"folder and pass that folder") from None
    if folder is None:
        raise CheckpointError(f"{spec}: https://huggingface.co/{repo} has no model.safetensors or pytorch_model.bin")
    problem = _problem(release, folder, unsafe) if release is not None else None
    if problem:
        raise CheckpointError(f"{spec}: the files downloaded from https://huggingface.co/{repo} into {folder} "
                              f"{problem}")
    return folder


# ---------------------------------------------------------------------------------------------------------------
# python -m maetransfer.zoo
# ---------------------------------------------------------------------------------------------------------------
def listing() -> str:
    """Every registered name with what it is, the published number and the command that should print it."""
    lines = [f"Released checkpoints (files are cached in {cache_dir()}; Hugging Face ids in huggingface_hub's "
             f"cache). Pass a name wherever a tool takes a checkpoint path.", ""]
    for release in RELEASES.values():
        source = release.url or f"https://huggingface.co/{release.hub_repo}"
        check = f", {release.checksum.replace(':', ' ')}..." if release.checksum else ""
        lines += [f"{release.name}", f"    {release.what}", f"    from {source}{check}"]
        if release.result:
            lines.append(f"    published: {release.result}")
        lines += [f"    run: {release.command}", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m maetransfer.zoo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="registered names or Hugging Face hub ids to download (or find in "
                                                 "the cache); their local paths are printed. None: list the names")
    args = parser.parse_args(argv)
    if not args.names:
        print(listing())
    for name in args.names:
        try:
            path = fetch(name)
        except CheckpointError as exc:
            parser.exit(1, f"error: {exc}\n")
        if path is None:
            parser.exit(1, f"error: {name}: not a registered name (`python -m maetransfer.zoo` lists them) nor a "
                           f"Hugging Face hub id\n")
        print(path)


if __name__ == "__main__":
    main()
