#!/usr/bin/env python
"""Mask R-CNN throughput and memory: training seconds per iteration, inference images per second and peak memory of
our ViTDet-style detector (ViT-B at --size, and the CPU demo model at its size), side by side with torchvision's
Mask R-CNN ResNet-50-FPN v2 at the same input size as a familiar peer.

  python benchmarks/bench_det.py                          # 1024 px, 2 timed iterations (CPU: minutes)
  python benchmarks/bench_det.py --size 512 --iters 3 --batch 2

Each row runs in a fresh process so that peak memory (torch.cuda.max_memory_allocated on GPU, ru_maxrss on CPU)
belongs to that model alone. Inputs are random images with a few random instances, padded to the square as in
training; the numbers measure compute, not data loading.
"""
import argparse
import multiprocessing as mp
import resource
import time


def _targets(batch, size, num_classes, generator, first_label):
    """Random box-shaped instances as bitmasks; labels from `first_label` (torchvision counts the background as 0,
    our detector as detectron2 puts it last)."""
    import torch
    targets = []
    for _ in range(batch):
        n = 4
        xy = torch.rand(n, 2, generator=generator) * size * 0.6
        wh = (torch.rand(n, 2, generator=generator) * 0.3 + 0.05) * size
        boxes = torch.cat([xy, (xy + wh).clamp(max=size - 1)], dim=1)
        masks = torch.zeros(n, size, size, dtype=torch.uint8)
        for i, (x0, y0, x1, y1) in enumerate(boxes.round().int().tolist()):
            masks[i, y0:y1, x0:x1] = 1
        labels = torch.randint(first_label, num_classes + first_label, (n,), generator=generator)
        targets.append({"boxes": boxes, "labels": labels,
                        "masks": masks})
    return targets


def _build(name, size):
    if name == "torchvision_r50_fpn_v2":
        from torchvision.models.detection import maskrcnn_resnet50_fpn_v2
        return maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=81, min_size=size,
                                        max_size=size), 80
    from maetransfer.config import load_config
    from maetransfer.det.model import build_mask_rcnn
    config = "configs/det/demo.yaml" if name == "demo" else f"configs/det/mask_rcnn_{name}_coco.yaml"
    cfg = load_config(config, [f"model.img_size={size}"])
    num_classes = 6 if name == "demo" else 80
    return build_mask_rcnn(cfg, num_classes), num_classes


def measure(name, size, batch, iters, warmup, amp, device_name, queue):
    import torch
    device = torch.device(device_name)
    model, num_classes = _build(name, size)
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    images = [(torch.rand(3, size, size, generator=g) * 255).to(device) for _ in range(batch)]
    first_label = 1 if name == "torchvision_r50_fpn_v2" else 0
    targets = [{k: v.to(device) for k, v in t.items()} for t in _targets(batch, size, num_classes, g, first_label)]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    model.train()
    for i in range(warmup + iters):
        if i == warmup:
            sync()
            start = time.perf_counter()
        with autocast:
            loss = sum(model(images, targets).values())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync()
    train_s = (time.perf_counter() - start) / iters
    train_mem = torch.cuda.max_memory_allocated() if device.type == "cuda" else None

    model.eval()
    with torch.no_grad():
        for i in range(warmup + iters):
            if i == warmup:
                sync()
                start = time.perf_counter()
            with autocast:
                model(images)
        sync()
    infer_ips = batch * iters / (time.perf_counter() - start)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    if device.type == "cuda":
        peak = f"{max(train_mem, torch.cuda.max_memory_allocated()) / 2 ** 30:.2f} GiB (cuda)"
    else:
        peak = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20:.2f} GiB (rss)"
    queue.put((name, size, batch, params, train_s, infer_ips, peak))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024, help="input size of the ViT-B and peer rows")
    parser.add_argument("--demo-size", type=int, default=128, help="input size of the demo-model row")
    parser.add_argument("--batch", type=int, default=1, help="images per iteration")
    parser.add_argument("--iters", type=int, default=2, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--arch", default="vit_base", choices=["vit_base", "vit_large", "vit_huge"])
    parser.add_argument("--no-peer", action="store_true", help="skip torchvision's ResNet-50-FPN Mask R-CNN")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (as the recipes train on GPU)")
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    args = parser.parse_args(argv)
    rows = [(args.arch, args.size), ("demo", args.demo_size)]
    if not args.no_peer:
        rows.append(("torchvision_r50_fpn_v2", args.size))
    ctx = mp.get_context("spawn")
    results = []
    for name, size in rows:
        queue = ctx.Queue()
        proc = ctx.Process(target=measure, args=(name, size, args.batch, args.iters, args.warmup, args.amp,
                                                 args.device, queue))
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            raise SystemExit(f"error: the {name} run at {size} px failed (exit code {proc.exitcode})")
        results.append(queue.get())
    print(f"\ndevice {args.device}, batch {args.batch}, {args.iters} timed iterations after {args.warmup} warm-up"
          f"{', bf16 autocast' if args.amp else ''}")
    header = f"{'model':<24} {'size':>5} {'params (M)':>10} {'train s/iter':>13} {'infer img/s':>12}  peak memory"
    print(header)
    print("-" * len(header))
    for name, size, batch, params, train_s, infer_ips, peak in results:
        print(f"{name:<24} {size:>5} {params:>10.1f} {train_s:>13.3f} {infer_ips:>12.2f}  {peak}")


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
