"""The segmentation data path against mmseg 1.2.2 itself (skipped where mmseg is not installed): `tools/train_seg.py
--eval-only` of a file that mmseg wrote gives the label maps of mmseg's `Runner.test()` on every pixel of real photos
(portrait, square, landscape, small, tall, 2.5:1 and 4:1 panoramas) but near-ties, and the training pipeline gives
mmseg's network inputs and labels. Run in the oracle's environment (docs/segmentation.md):
`pytest -s tests/test_seg_mmseg_oracle.py` prints the counts."""
import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from maetransfer.config import load_config
from maetransfer.data.ade import ADE20KDataset, SegTrainTransform, read_image, resize_image, view_size
from maetransfer.seg import evaluate
from real_photos import write_photo_set
from tool_modules import load_tool

ROOT = Path(__file__).resolve().parent.parent
NEAR_TIE = 1e-5  # the top two scores within this relative difference: either class is a right answer

# A micro UperNet-MAE (ViT 64 wide, 4 blocks) at the ADE20K recipe's scale (short = 512: bound (2048, 512), 512
# crops, stride 341) or a quarter of it (short = 128: bound (512, 128), stride 85). Every photo's short side becomes
# `short` (the 4:1 panorama's long side reaches the bound first): mmseg's MAE takes only its crop size.


def ours_overrides(short: int):
    stride = short * 341 // 512
    return ["model.arch=vit_micro", "model.patch_size=16", f"model.img_size={short}", "model.out_indices=[0,1,2,3]",
            "model.norm=BN", "model.channels=16", "model.aux_channels=8", f"data.scale=[{4 * short},{short}]",
            f"data.crop_size=[{short},{short}]", f"eval.crop_size=[{short},{short}]",
            f"eval.stride=[{stride},{stride}]", "eval.num_vis=0", "eval.num_workers=0", "train.num_workers=0"]


def mmseg_config(root: Path, work_dir: Path, short: int):
    """mmseg's own MAE UperNet ADE20K config, cut to the micro model and scale above."""
    import mmseg
    from mmengine.config import Config

    path = Path(mmseg.__file__).parent / ".mim/configs/mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py"
    if not path.is_file():
        pytest.skip("mmseg's configs/mae not found in the installed package")
    cfg = Config.fromfile(str(path))
    bn, crop, scale = dict(type="BN", requires_grad=True), (short, short), (4 * short, short)
    cfg.model.pretrained = None
    cfg.model.data_preprocessor.size = crop
    cfg.model.backbone.update(img_size=crop, patch_size=16, embed_dims=64, num_layers=4, num_heads=4,
                              out_indices=[0, 1, 2, 3])
    cfg.model.neck.update(embed_dim=64, norm_cfg=bn)
    cfg.model.decode_head.update(in_channels=[64] * 4, channels=16, norm_cfg=bn)
    cfg.model.auxiliary_head.update(in_channels=64, channels=8, norm_cfg=bn)
    cfg.model.test_cfg = dict(mode="slide", crop_size=crop, stride=(short * 341 // 512,) * 2)
    for step in cfg.train_pipeline:
        step.update({"RandomResize": dict(scale=scale), "RandomCrop": dict(crop_size=crop)}.get(step.type, {}))
    for step in cfg.test_pipeline:
        step.update(dict(scale=scale) if step.type == "Resize" else {})
    for loader, split, pipeline in (("train_dataloader", "training", cfg.train_pipeline),
                                    ("test_dataloader", "validation", cfg.test_pipeline)):
        cfg[loader] = copy.deepcopy(cfg[loader])  # the config shares one dict between val and test
        cfg[loader].update(num_workers=0, persistent_workers=False)
        cfg[loader].dataset.update(data_root=str(root), pipeline=pipeline,
                                   data_prefix=dict(img_path=f"images/{split}", seg_map_path=f"annotations/{split}"))
    cfg.work_dir = str(work_dir)
    return cfg


def mmseg_written_checkpoint(cfg, path: Path) -> Path:
    """mmseg's model with its own initialisation (relative position tables and layer scales included), saved by
    mmengine as mmseg's Runner saves weights; the class scores made decisive, so that near-ties are rare."""
    from mmengine.runner.checkpoint import save_checkpoint, weights_to_cpu
    from mmseg.datasets import ADE20KDataset as MMSegADE20K
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules()
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    torch.nn.init.normal_(model.decode_head.conv_seg.weight, std=0.5)
    save_checkpoint({"meta": {"dataset_meta": dict(MMSegADE20K.METAINFO)},
                     "state_dict": weights_to_cpu(model.state_dict())}, str(path))
    return path


@pytest.mark.parametrize("short", [128, 512])
def test_eval_only_gives_mmsegs_runner_test_label_maps_on_real_photos(tmp_path, mmseg, monkeypatch, short):
    """The same mmseg-written file in mmseg's Runner.test() and in --eval-only: the resized inputs equal, the label
    maps equal on every pixel where mmseg's top two class scores are not a near-tie."""
    from mmengine.hooks import Hook
    from mmengine.runner import Runner

    root = tmp_path / "ADEChallengeData2016"
    write_photo_set(root)
    cfg = mmseg_config(root, tmp_path / "mmseg_run", short)
    cfg.load_from = str(mmseg_written_checkpoint(cfg, tmp_path / "mmseg_written.pth"))

    class Record(Hook):
        """Per image: mmseg's resized network input (uint8 BGR), label map and top two class scores."""
        def __init__(self):
            self.images = {}

        def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            for image, sample in zip(data_batch["inputs"], outputs):
                top2 = sample.seg_logits.data.topk(2, dim=0).values
                self.images[Path(sample.img_path).stem] = (image, sample.pred_sem_seg.data[0], top2)

    record = Record()
    runner = Runner.from_cfg(cfg)
    runner.register_hook(record)
    theirs = runner.test()

    maps = {}
    process = evaluate.SegEvaluator.process

    def keep(self, batch, outputs):  # the label maps --eval-only scores
        maps[batch["name"]] = outputs.cpu()
        return process(self, batch, outputs)

    monkeypatch.setattr(evaluate.SegEvaluator, "process", keep)
    ours = load_tool("train_seg").main(["--config", str(ROOT / "configs/seg/base.yaml"), "--eval-only",
                                        "--checkpoint", cfg.load_from, "--output-dir", str(tmp_path / "ours"),
                                        f"data.root={root}", *ours_overrides(short)])
    assert sorted(maps) == sorted(record.images)

    # the network input: decoded and resized (the test pipeline) equal on every pixel
    for name, (image, _, _) in record.images.items():
        ours_image = read_image(root / "images/validation" / f"{name}.jpg")
        ours_image = resize_image(ours_image, view_size(*ours_image.shape[1:], (4 * short, short)))
        assert torch.equal(ours_image, image.flip(0)), name

    pixels = differ = ties = 0
    classes = set()
    for name, (_, label_map, top2) in record.images.items():
        classes |= set(label_map.unique().tolist())
        near_tie = (top2[0] - top2[1]) <= NEAR_TIE * top2[0].abs()
        wrong = maps[name] != label_map
        assert not (wrong & ~near_tie).any(), f"{name}: {int((wrong & ~near_tie).sum())} pixels differ, not near-ties"
        pixels, differ, ties = pixels + wrong.numel(), differ + int(wrong.sum()), ties + int(near_tie.sum())
    print(f"\n--eval-only vs mmseg Runner.test() at short side {short}: {len(maps)} photos, {pixels} pixels "
          f"({len(classes)} classes predicted), {differ} differ, {ties} near-ties (top two scores within "
          f"{NEAR_TIE:g} relative); mIoU {ours['mIoU']} vs {theirs['mIoU']}, aAcc {ours['aAcc']} vs {theirs['aAcc']}")
    assert len(classes) >= 20  # label maps with many classes, not one that any model would give
    if differ == 0:  # mmseg rounds its percentages in float32
        assert all(np.float32(ours[k]) == np.float32(theirs[k]) for k in ("mIoU", "mAcc", "aAcc"))


def test_training_pipeline_gives_mmsegs_network_inputs_and_labels(tmp_path, mmseg):
    """mmseg's ADE20K training pipeline (RandomResize, RandomCrop with cat_max_ratio, RandomFlip,
    PhotoMetricDistortion) and SegDataPreProcessor (RGB, normalise, pad to the crop) against SegTrainTransform, from
    the same numpy seed: equal images and labels on every pixel, for every photo and 16 seeds."""
    from mmengine.dataset import pseudo_collate
    from mmseg.registry import DATASETS, MODELS
    from mmseg.utils import register_all_modules

    root = tmp_path / "ADEChallengeData2016"
    write_photo_set(root, "training")
    cfg = mmseg_config(root, tmp_path / "mmseg_run", 128)
    register_all_modules()
    theirs_set = DATASETS.build(cfg.train_dataloader.dataset)
    preprocess = MODELS.build(cfg.model.data_preprocessor)
    data_cfg = load_config(ROOT / "configs/seg/base.yaml", [o for o in ours_overrides(128) if o.startswith("data")])
    data_cfg = data_cfg.data
    ours_set = ADE20KDataset(root, "training", transform=SegTrainTransform(data_cfg))
    assert [Path(theirs_set.get_data_info(i)["img_path"]).stem for i in range(len(theirs_set))] == ours_set.names
    for seed in range(16):
        for i in range(len(ours_set)):
            np.random.seed(seed)
            ours = ours_set[i]
            np.random.seed(seed)
            theirs = preprocess(pseudo_collate([theirs_set[i]]), training=True)
            assert torch.equal(ours["image"], theirs["inputs"][0]), (seed, ours_set.names[i])
            assert torch.equal(ours["label"], theirs["data_samples"][0].gt_sem_seg.data[0]), (seed, ours_set.names[i])
