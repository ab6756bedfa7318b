#!/usr/bin/env python
"""UperNet throughput and memory: training seconds per iteration at 512 x 512 crops, sliding-window inference images
per second at 512 x 2048 (the ADE20K test size after the (2048, 512) resize of a wide image) and peak memory, for
our UperNet + ViT-B (configs/seg/upernet_vit_base_ade20k.yaml) and the CPU demo model, side by side with
torchvision's DeepLabV3-ResNet50 (with its auxiliary FCN head, 150 classes) run through the same loop as a familiar
peer. mmseg's published figures for UperNet MAE-B (V100, fp16, batch 2 per GPU): 9.96 GB training memory,
7.14 images/s inference.

  python benchmarks/bench_seg.py                      # 2 timed iterations per row (CPU: minutes)
  python benchmarks/bench_seg.py --iters 10 --amp bf16 --device cuda

Each row runs in a fresh process so that peak memory (torch.cuda.max_memory_allocated on GPU, ru_maxrss on CPU)
belongs to that model alone. Inputs are random; the numbers measure compute, not data loading.
"""
import argparse
import multiprocessing as mp
import resource
import time
from contextlib import nullcontext

MODELS = ("vit_base", "demo", "torchvision_deeplabv3_r50")


def _build(name):
    """(model, train_fn(images, labels) -> loss, encode_decode(images) -> logits, crop, num_classes)"""
    import torch.nn.functional as F
    if name == "torchvision_deeplabv3_r50":
        from torchvision.models.segmentation import deeplabv3_resnet50
        model = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=150, aux_loss=True)

        def train_fn(images, labels):
            out = model(images)
            return (F.cross_entropy(out["out"], labels, ignore_index=255)
                    + 0.4 * F.cross_entropy(out["aux"], labels, ignore_index=255))

        return model, train_fn, lambda x: model(x)["out"], 512, 150
    from maetransfer.config import load_config
    from maetransfer.seg.segmentor import build_segmentor
    cfg = load_config("configs/seg/demo.yaml" if name == "demo" else "configs/seg/upernet_vit_base_ade20k.yaml")
    model = build_segmentor(cfg.model)

    def train_fn(images, labels):
        return sum(v for k, v in model(images, labels).items() if "loss" in k)

    return model, train_fn, model.encode_decode, int(cfg.model.img_size), int(cfg.model.num_classes)


def measure(name, batch, iters, warmup, amp, device_name, queue):
    import torch
    from maetransfer.seg.inference import slide_inference
    device = torch.device(device_name)
    model, train_fn, encode_decode, crop, num_classes = _build(name)
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else nullcontext
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, crop, crop, generator=g).to(device)
    labels = torch.randint(0, num_classes, (batch, crop, crop), generator=g).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    model.train()
    for i in range(warmup + iters):
        if i == warmup:
            sync()
            start = time.perf_counter()
        with autocast():
            loss = train_fn(images, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync()
    train_s = (time.perf_counter() - start) / iters
    train_mem = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None

    model.eval()
    # the test image: 512 x 2048 scaled to the model's crop (the demo crops 128: a 128 x 512 image)
    test = torch.randn(1, 3, crop, crop * 4, generator=g).to(device)
    stride = (crop * 2 + 2) // 3  # 341 at 512
    with torch.no_grad():
        for i in range(warmup + iters):
            if i == warmup:
                sync()
                start = time.perf_counter()
            with autocast():
                slide_inference(encode_decode, test, num_classes, (crop, crop), (stride, stride))
    sync()
    infer_ips = iters / (time.perf_counter() - start)
    if device.type == "cuda":
        peak = max(train_mem, torch.cuda.max_memory_allocated(device) / 2 ** 30)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    params = sum(p.numel() for p in model.parameters()) / 1e6
    queue.put((name, crop, params, train_s, infer_ips, peak))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--batch", type=int, default=2, help="training images per iteration (mmseg: 2 per GPU)")
    parser.add_argument("--iters", type=int, default=2, help="timed iterations (after --warmup)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"))
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    args = parser.parse_args(argv)
    ctx = mp.get_context("spawn")
    rows = []
    for name in args.models:
        queue = ctx.Queue()
        proc = ctx.Process(target=measure, args=(name, args.batch, args.iters, args.warmup, args.amp, args.device,
                                                 queue))
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            print(f"{name}: failed (exit code {proc.exitcode})")
            continue
        rows.append(queue.get())
    mem = "peak GPU mem GiB" if args.device.startswith("cuda") else "peak RSS GiB"
    print(f"\ndevice {args.device}, amp {args.amp}, train batch {args.batch}, {args.iters} timed iterations")
    print(f"| model | crop | params (M) | train s/iter | slide inference img/s (crop x 4crop) | {mem} |")
    print("|---|---|---|---|---|---|")
    for name, crop, params, train_s, ips, peak in rows:
        print(f"| {name} | {crop} | {params:.1f} | {train_s:.3f} | {ips:.3f} | {peak:.2f} |")
    return rows


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
