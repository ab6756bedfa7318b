"""maetransfer.zoo: released checkpoints by name. The real download code runs against an HTTP server on 127.0.0.1
serving small checkpoints in the released formats: complete, interrupted and resumed, corrupt (digest, size, format,
contents), server down; the tools take the names; Hugging Face ids come from huggingface_hub's cache. No internet."""
import dataclasses
import hashlib
import http.server
import io
import re
import threading
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from PIL import Image
from timm.models.vision_transformer import VisionTransformer as TimmViT

from maetransfer import zoo
from maetransfer.checkpoint import CheckpointError, parse_state, read_checkpoint, save_hf, to_mmseg
from maetransfer.config import load_config
from maetransfer.data.cls import write_demo_data
from maetransfer.det.model import build_mask_rcnn
from maetransfer.models import build_vit
from maetransfer.seg.segmentor import build_segmentor
from pretrain.models_mae import MaskedAutoencoderViT
from tool_modules import load_tool

ROOT = Path(__file__).resolve().parent.parent


def _tool(name):
    return load_tool(name)


class _ReleaseHandler(http.server.BaseHTTPRequestHandler):
    """Serves `server.files`; honours Range unless `server.honour_range` is off; `server.cuts` lists byte counts after
    which the next responses stop (the connection closes with the body incomplete)."""

    def do_GET(self):
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        body = server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        asked = self.headers.get("Range")
        if asked and server.honour_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", asked).group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        sent = body[start:]
        self.wfile.write(sent[:server.cuts.pop(0)] if server.cuts else sent)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ReleaseHandler)
    httpd.files, httpd.requests, httpd.cuts, httpd.honour_range = {}, [], [], True
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture
def dead_url():
    """The address of a server that was shut down: connections are refused."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ReleaseHandler)
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.server_close()
    return url


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """torch's hub cache under tmp_path (TORCH_HOME, as a user would set it)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def _saved(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def encoder():
    """A released-encoder layout file ({'model': encoder}, as mae_pretrain_vit_*.pth) of a vit_micro."""
    torch.manual_seed(0)
    model = build_vit("vit_micro")
    return model.state_dict(), _saved({"model": model.state_dict()})


def _register(monkeypatch, server, name, body, contents="encoder", **fields) -> zoo.Release:
    """A registry entry for `body`, served by `server` (sha256 prefix as mmseg publishes it)."""
    path = f"/releases/{name}.pth"
    server.files[path] = body
    release = zoo.Release(name, "test file", fields.pop("format", "mae"), fields.pop("arch", "vit_micro"), contents,
                          "python tools/...", url=server.url + path,
                          checksum=fields.pop("checksum", "sha256:" + hashlib.sha256(body).hexdigest()[:8]), **fields)
    monkeypatch.setitem(zoo.RELEASES, name, release)
    return release


def test_a_name_downloads_once_is_checked_and_reads_as_the_file(server, cache, monkeypatch, encoder):
    state, body = encoder
    _register(monkeypatch, server, "tiny_encoder", body)
    ckpt = read_checkpoint(zoo.resolve("tiny_encoder"))
    assert ckpt.format == "mae" and set(ckpt.encoder) == set(state)
    for key, value in state.items():
        assert torch.equal(ckpt.encoder[key], value), key
    assert (cache / "tiny_encoder.pth").read_bytes() == body
    # no .partial; the stamp says the file was checked
    assert sorted(p.name for p in cache.iterdir()) == ["tiny_encoder.pth", "tiny_encoder.pth.checked",
                                                       "tiny_encoder.pth.lock"]
    assert server.requests == [("/releases/tiny_encoder.pth", None)]
    read_checkpoint(zoo.resolve("tiny_encoder"))
    assert len(server.requests) == 1  # from the cache, no request


def test_the_zoo_command_prints_the_cached_path(server, cache, monkeypatch, encoder, capsys):
    _register(monkeypatch, server, "tiny_encoder", encoder[1])
    zoo.main(["tiny_encoder"])
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(cache / "tiny_encoder.pth")
    with pytest.raises(SystemExit) as exit_info:
        zoo.main(["no_such_release"])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip() == ("error: no_such_release: not a registered name (`python -m "
                                               "maetransfer.zoo` lists them) nor a Hugging Face hub id")


def test_processes_asking_at_once_download_once(server, cache, monkeypatch, encoder):
    _register(monkeypatch, server, "tiny_encoder", encoder[1])
    paths = []
    threads = [threading.Thread(target=lambda: paths.append(zoo.fetch("tiny_encoder"))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert paths == [cache / "tiny_encoder.pth"] * 4 and len(server.requests) == 1


def test_an_interrupted_download_resumes_with_a_range_request(server, cache, monkeypatch, encoder):
    body = encoder[1]
    _register(monkeypatch, server, "tiny_encoder", body)
    server.cuts = [1000, 5000]
    zoo.fetch("tiny_encoder")
    assert [r for _, r in server.requests] == [None, "bytes=1000-", "bytes=6000-"]
    assert (cache / "tiny_encoder.pth").read_bytes() == body


def test_a_download_that_keeps_breaking_off_is_resumed_by_the_next_run(server, cache, monkeypatch, encoder):
    body = encoder[1]
    release = _register(monkeypatch, server, "tiny_encoder", body)
    server.cuts = [1000, 1000, 1000]
    with pytest.raises(CheckpointError) as error:
        zoo.fetch("tiny_encoder")
    partial_file = cache / "tiny_encoder.pth.partial"
    assert str(error.value) == (f"tiny_encoder: the download of {release.url} broke off 3 times (3000 bytes kept in "
                                f"{partial_file}); run again to resume, or fetch the URL by hand and save it as "
                                f"{cache / 'tiny_encoder.pth'}")
    assert partial_file.read_bytes() == body[:3000] and not (cache / "tiny_encoder.pth").exists()
    zoo.fetch("tiny_encoder")
    assert server.requests[-1][1] == "bytes=3000-"
    assert (cache / "tiny_encoder.pth").read_bytes() == body and not partial_file.exists()


def test_a_server_that_ignores_range_sends_the_file_again(server, cache, monkeypatch, encoder):
    body = encoder[1]
    _register(monkeypatch, server, "tiny_encoder", body)
    (cache).mkdir(parents=True)
    (cache / "tiny_encoder.pth.partial").write_bytes(body[:777])
    server.honour_range = False
    zoo.fetch("tiny_encoder")
    assert server.requests == [("/releases/tiny_encoder.pth", "bytes=777-")]
    assert (cache / "tiny_encoder.pth").read_bytes() == body


def test_a_complete_partial_file_is_recognised_by_the_server_s_416(server, cache, monkeypatch, encoder):
    body = encoder[1]
    _register(monkeypatch, server, "tiny_encoder", body)
    cache.mkdir(parents=True)
    (cache / "tiny_encoder.pth.partial").write_bytes(body)  # the previous run was killed before the rename
    zoo.fetch("tiny_encoder")
    assert server.requests == [("/releases/tiny_encoder.pth", f"bytes={len(body)}-")]
    assert (cache / "tiny_encoder.pth").read_bytes() == body


def test_a_wrong_checksum_is_refused_and_the_file_deleted(server, cache, monkeypatch, encoder):
    body = encoder[1]
    release = _register(monkeypatch, server, "tiny_encoder", body, checksum="md5:000000")
    with pytest.raises(CheckpointError) as error:
        zoo.fetch("tiny_encoder")
    md5 = hashlib.md5(body).hexdigest()
    assert str(error.value) == (f"tiny_encoder: the file downloaded from {release.url} has md5 {md5}, not the "
                                f"published 000000...: a corrupt download or a changed file; it was deleted, run "
                                f"again to download it anew")
    assert not (cache / "tiny_encoder.pth").exists() and not (cache / "tiny_encoder.pth.partial").exists()


@pytest.mark.parametrize("fields, problem", [
    (dict(arch="vit_small"), "is a ViT with embed 64/depth 4/patch 16, not vit_small (embed 384/depth 12/patch 16)"),
    (dict(arch="vit_micro", patch_size=8), "is a ViT with embed 64/depth 4/patch 16, not vit_micro (embed "
                                           "64/depth 4/patch 8)"),
    (dict(contents="classifier"), "is not a classifier (encoder + fc_norm/head)"),
    (dict(contents="encoder+decoder"), "is not an MAE encoder with its decoder"),
    (dict(format="detectron2"), "reads as a mae checkpoint, not detectron2"),
])
def test_a_file_of_another_architecture_or_content_is_refused(server, cache, monkeypatch, encoder, fields, problem):
    release = _register(monkeypatch, server, "tiny_encoder", encoder[1], **fields)
    with pytest.raises(CheckpointError) as error:
        zoo.fetch("tiny_encoder")
    assert str(error.value) == (f"tiny_encoder: the file downloaded from {release.url} {problem}; it was deleted, run "
                                f"again to download it anew")
    assert not (cache / "tiny_encoder.pth").exists() and not (cache / "tiny_encoder.pth.partial").exists()


@pytest.mark.parametrize("content", ["one tensor", "demo-size encoder"])
def test_a_file_placed_by_hand_under_a_released_name_is_refused_in_one_line(cache, tmp_path, content):
    """The real entry mae_pretrain_vit_base (published md5 prefix 8cad7c): a file copied into the cache under its name
    is checked at first use as a download is; the tool ends with one line saying what to do, and the file is kept."""
    state = {"w": torch.zeros(3)} if content == "one tensor" else build_vit("vit_micro").state_dict()
    body = _saved({"model": state})
    cache.mkdir(parents=True)
    (cache / "mae_pretrain_vit_base.pth").write_bytes(body)
    with pytest.raises(SystemExit) as exit_info:
        _tool("convert_checkpoint").main(["mae_pretrain_vit_base", "--output", str(tmp_path / "out.pth"), "--to",
                                          "timm"])
    assert exit_info.value.code == (f"error: mae_pretrain_vit_base: {cache / 'mae_pretrain_vit_base.pth'} in the "
                                    f"checkpoint cache has md5 {hashlib.md5(body).hexdigest()}, not the published "
                                    f"8cad7c...: a corrupt download or a changed file; delete it to download the "
                                    f"release anew, or pass the file by its path to use it as it is")
    assert (cache / "mae_pretrain_vit_base.pth").read_bytes() == body and not (tmp_path / "out.pth").exists()


def test_a_file_placed_by_hand_is_checked_for_structure_where_no_digest_is_published(cache, monkeypatch, encoder,
                                                                                     tmp_path):
    """A release without a published digest (registered here as vit_small): a demo-size encoder copied into the cache
    under its name is refused by the tool that asks for it, in one line, and the file is kept."""
    release = zoo.Release("tiny_encoder", "test file", "mae", "vit_small", "encoder", "python tools/...",
                          url="http://127.0.0.1:9/releases/tiny_encoder.pth")
    monkeypatch.setitem(zoo.RELEASES, release.name, release)
    cache.mkdir(parents=True)
    (cache / "tiny_encoder.pth").write_bytes(encoder[1])
    with pytest.raises(SystemExit) as exit_info:
        _tool("convert_checkpoint").main(["tiny_encoder", "--output", str(tmp_path / "out.pth"), "--to", "timm"])
    assert exit_info.value.code == (f"error: tiny_encoder: {cache / 'tiny_encoder.pth'} in the checkpoint cache is a "
                                    f"ViT with embed 64/depth 4/patch 16, not vit_small (embed 384/depth 12/patch "
                                    f"16); delete it to download the release anew, or pass the file by its path to "
                                    f"use it as it is")
    assert (cache / "tiny_encoder.pth").read_bytes() == encoder[1] and not (tmp_path / "out.pth").exists()


def test_a_right_file_placed_by_hand_is_checked_once_and_again_when_changed(cache, monkeypatch, encoder):
    body = encoder[1]
    release = zoo.Release("tiny_encoder", "test file", "mae", "vit_micro", "encoder", "python tools/...",
                          url="http://127.0.0.1:9/releases/tiny_encoder.pth",
                          checksum="md5:" + hashlib.md5(body).hexdigest()[:6])
    monkeypatch.setitem(zoo.RELEASES, release.name, release)
    cache.mkdir(parents=True)
    (cache / "tiny_encoder.pth").write_bytes(body)
    checks = []
    real_problem = zoo._problem
    monkeypatch.setattr(zoo, "_problem", lambda *args: checks.append(args[1]) or real_problem(*args))
    assert zoo.resolve("tiny_encoder") == zoo.resolve("tiny_encoder") == cache / "tiny_encoder.pth"
    assert len(checks) == 1  # no network asked (the URL is closed), and the digest computed once
    (cache / "tiny_encoder.pth").write_bytes(body[:-10] + b"0123456789")  # changed in place after the check
    with pytest.raises(CheckpointError, match="in the checkpoint cache (has md5|is not a readable)"):
        zoo.resolve("tiny_encoder")
    assert len(checks) == 2


def test_a_truncated_file_without_length_is_refused_as_unreadable(server, cache, monkeypatch, encoder):
    release = _register(monkeypatch, server, "tiny_encoder", encoder[1][:5000], checksum="")
    with pytest.raises(CheckpointError, match=re.escape(f"tiny_encoder: the file downloaded from {release.url} is not "
                                                        f"a readable mae checkpoint ({cache}/tiny_encoder.pth.partial: "
                                                        "not a readable checkpoint")):
        zoo.fetch("tiny_encoder")


def _detector_file() -> bytes:
    cfg = load_config(ROOT / "configs/det/demo.yaml", [
        "model.arch=vit_micro", "model.patch_size=8", "model.img_size=64", "model.pretrain_img_size=32",
        "model.window_size=4", "model.global_blocks=[1,3]", "model.out_channels=32", "model.head_dim=32",
        "model.box_fc_dim=64", "model.anchor_sizes=[8,16,32,64]"])
    return _saved({"model": build_mask_rcnn(cfg, 3).state_dict(), "__author__": "test"})


def _segmentor_file() -> bytes:
    """An mmseg UperNet-MAE file (beit2mmseg backbone names, neck.*, decode_head.*, auxiliary_head.*)."""
    cfg = load_config(ROOT / "configs/seg/demo.yaml", ["model.arch=vit_micro", "model.patch_size=8",
                                                       "model.img_size=64", "model.channels=16",
                                                       "model.aux_channels=8"])
    ckpt = parse_state({"model": build_segmentor(cfg.model).state_dict()})
    state = to_mmseg(ckpt)["state_dict"]
    state.update({k: v for k, v in ckpt.other.items() if k.startswith(("decode_head.", "auxiliary_head.", "neck."))})
    return _saved({"state_dict": state, "meta": {"CLASSES": ["a"], "mmcv_version": "1.4.8"}})


def _mae_file() -> bytes:
    model = MaskedAutoencoderViT(img_size=32, patch_size=16, embed_dim=64, depth=4, num_heads=4, decoder_embed_dim=32,
                                 decoder_depth=1, decoder_num_heads=4)
    return _saved({"model": model.state_dict()})  # the `_full` / `mae_visualize_*` layout


def _classifier_file() -> bytes:
    model = TimmViT(img_size=32, patch_size=16, embed_dim=64, depth=4, num_heads=4, num_classes=6, global_pool="avg",
                    norm_layer=partial(nn.LayerNorm, eps=1e-6))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("norm.")}
    return _saved({"model": state})  # the mae_finetuned_vit_* layout: fc_norm + head, no final norm


@pytest.mark.parametrize("make, fields", [
    (_detector_file, dict(format="detectron2", contents="detector", patch_size=8)),
    (_segmentor_file, dict(format="mmseg", contents="segmentor", patch_size=8)),
    (_mae_file, dict(contents="encoder+decoder")),
    (_classifier_file, dict(contents="classifier")),
])
def test_each_released_layout_passes_the_structural_check(server, cache, monkeypatch, make, fields):
    body = make()
    _register(monkeypatch, server, "tiny_release", body, **fields)
    assert zoo.fetch("tiny_release").read_bytes() == body


def test_the_detector_is_refused_where_a_segmentor_is_registered(server, monkeypatch):
    _register(monkeypatch, server, "tiny_release", _detector_file(), format="mmseg", contents="segmentor",
              patch_size=8)
    with pytest.raises(CheckpointError, match="reads as a detectron2 checkpoint, not mmseg; it was deleted"):
        zoo.fetch("tiny_release")


def _imagenet_val(root: Path) -> Path:
    for name in ("n01440764", "n01443537"):
        (root / "val" / name).mkdir(parents=True)
        Image.new("RGB", (40, 40), (90, 30, 200)).save(root / "val" / name / "a.JPEG")
    return root


def test_eval_only_of_a_released_name_with_the_server_down(dead_url, cache, monkeypatch, tmp_path, capsys):
    """The issue's command, python tools/train_cls.py --config configs/cls/imagenet_vit_base.yaml --eval-only
    --checkpoint mae_finetuned_vit_base data.root=..., with its URL's server unreachable: exit 1, one line."""
    release = dataclasses.replace(zoo.RELEASES["mae_finetuned_vit_base"],
                                  url=f"{dead_url}/mae/finetune/mae_finetuned_vit_base.pth")
    monkeypatch.setitem(zoo.RELEASES, release.name, release)
    data = _imagenet_val(tmp_path / "imagenet")
    with pytest.raises(SystemExit) as exit_info:
        _tool("train_cls").main(["--config", str(ROOT / "configs/cls/imagenet_vit_base.yaml"), "--eval-only",
                                 "--checkpoint", "mae_finetuned_vit_base", f"data.root={data}", "data.num_classes=2",
                                 "train.num_workers=0", "--output-dir", str(tmp_path / "out")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"error: mae_finetuned_vit_base: cannot download {release.url} ([Errno 111] Connection refused); "
                   f"without network, fetch that URL by hand and save it as {cache / 'mae_finetuned_vit_base.pth'}")


def test_converting_a_released_name_with_a_corrupt_download(server, cache, monkeypatch, tmp_path, capsys):
    """The real entry (published md5 prefix 1b25e9) served a file that is not it: exit 1, one line naming the URL."""
    body = _classifier_file()
    server.files["/mae/finetune/mae_finetuned_vit_base.pth"] = body
    release = dataclasses.replace(zoo.RELEASES["mae_finetuned_vit_base"],
                                  url=f"{server.url}/mae/finetune/mae_finetuned_vit_base.pth")
    monkeypatch.setitem(zoo.RELEASES, release.name, release)
    with pytest.raises(SystemExit) as exit_info:
        _tool("convert_checkpoint").main(["mae_finetuned_vit_base", "--output", str(tmp_path / "out.pth"), "--to",
                                          "timm"])
    assert exit_info.value.code == (f"error: mae_finetuned_vit_base: the file downloaded from {release.url} has md5 "
                                    f"{hashlib.md5(body).hexdigest()}, not the published 1b25e9...: a corrupt "
                                    f"download or a changed file; it was deleted, run again to download it anew")


def test_eval_only_by_name_evaluates_the_downloaded_classifier(server, monkeypatch, tmp_path):
    """--checkpoint NAME gives the metrics of --checkpoint FILE (that path is checked against timm in
    test_cls_train)."""
    body = _classifier_file()
    _register(monkeypatch, server, "tiny_finetuned", body, contents="classifier")
    (tmp_path / "local.pth").write_bytes(body)
    write_demo_data(tmp_path / "data", n_train=6, n_val=12, size=32, seed=2)
    tool = _tool("train_cls")

    def evaluate(checkpoint, out):
        return tool.main(["--config", str(ROOT / "configs/cls/demo.yaml"), "--eval-only", "--checkpoint", checkpoint,
                          f"data.root={tmp_path / 'data'}", "data.demo=false", "model.img_size=32",
                          "model.arch=vit_micro", "eval.batch_size=4", "train.num_workers=0", "--output-dir",
                          str(tmp_path / out)])

    by_name = evaluate("tiny_finetuned", "by_name")
    assert by_name == evaluate(str(tmp_path / "local.pth"), "by_path") and by_name["num_images"] == 12


def _hub_cache(root: Path, repo: str, folder_writer) -> None:
    """huggingface_hub's cache layout: models--owner--name/refs/main -> snapshots/<commit>/files."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    storage = root / f"models--{repo.replace('/', '--')}"
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(commit)
    folder_writer(storage / "snapshots" / commit)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """HF_HUB_CACHE under tmp_path and HF_HUB_OFFLINE (huggingface_hub reads both at import, so they are set on its
    constants)."""
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hf"


def test_a_hub_id_is_read_from_huggingface_hub_s_cache(offline_hub, tmp_path):
    torch.manual_seed(0)
    model = MaskedAutoencoderViT(img_size=32, patch_size=16, embed_dim=64, depth=4, num_heads=4, decoder_embed_dim=32,
                                 decoder_depth=1, decoder_num_heads=4)
    ckpt = parse_state({"model": model.state_dict()})
    _hub_cache(offline_hub, "facebook/vit-mae-base", lambda folder: save_hf(ckpt, folder, 4, 4))
    _tool("convert_checkpoint").main(["facebook/vit-mae-base", "--output", str(tmp_path / "mae.pth"), "--to", "mae"])
    converted = torch.load(tmp_path / "mae.pth", weights_only=True)["model"]
    for key, value in model.state_dict().items():
        assert torch.equal(converted[key], value), key


def test_a_hub_id_missing_offline_says_what_to_fetch(offline_hub, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _tool("visualize_mae").main(["someone/missing-mae", str(tmp_path / "a.png"), "--output",
                                      str(tmp_path / "recon.png")])
    assert exit_info.value.code == 1  # bad input, as in every tool
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: someone/missing-mae: not a local file or folder")
    assert "download config.json and model.safetensors (or pytorch_model.bin) from " \
           "https://huggingface.co/someone/missing-mae into a folder and pass that folder" in err


def test_a_missing_file_path_is_never_taken_for_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for path in ("runs/model", "ckpt/mae_pretrain.pth", str(tmp_path / "runs" / "model")):  # folder, file suffix
        with pytest.raises(CheckpointError, match=f"{path}: checkpoint not found"):
            zoo.resolve(path)


def test_the_listing_gives_every_name_its_published_number_and_command(capsys):
    zoo.main([])
    out = capsys.readouterr().out
    for release in zoo.RELEASES.values():
        assert f"\n{release.name}\n" in out and f"run: {release.command}\n" in out
        if release.result:
            assert f"published: {release.result}\n" in out
        assert release.name in re.split(r"[ =]", release.command)  # as --checkpoint, init_checkpoint= or the file
        tool = release.command.split()[1 if release.command.startswith("python ") else 3]
        assert (ROOT / tool).is_file(), release.command
        config = re.search(r"--config (\S+)", release.command)
        if config:  # the config's header states the number that the registry publishes
            text = (ROOT / config.group(1)).read_text()
            numbers = re.findall(r"\d+\.\d+", release.result.split("(")[0])
            assert numbers and all(n in text for n in numbers), (release.name, numbers)


def test_a_run_from_a_released_name_keeps_the_name_in_its_config(server, cache, monkeypatch, encoder, tmp_path):
    """train.init_checkpoint=NAME: the tool downloads the file and fine-tunes from it; config.yaml and the
    checkpoint's config keep the name, so that the run is rerun from the name anywhere."""
    _register(monkeypatch, server, "tiny_encoder", encoder[1])
    write_demo_data(tmp_path / "data", n_train=4, n_val=2, size=32, seed=2)
    _tool("train_cls").main(["--config", str(ROOT / "configs/cls/demo.yaml"), "train.init_checkpoint=tiny_encoder",
                             f"data.root={tmp_path / 'data'}", "data.demo=false", "model.img_size=32",
                             "model.arch=vit_micro", "train.max_iters=1", "train.batch_size=2", "train.num_workers=0",
                             "eval.batch_size=2", "--output-dir", str(tmp_path / "run")])
    assert server.requests == [("/releases/tiny_encoder.pth", None)]
    assert load_config(tmp_path / "run" / "config.yaml").train.init_checkpoint == "tiny_encoder"
    saved = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)
    assert saved["config"]["train"]["init_checkpoint"] == "tiny_encoder"
