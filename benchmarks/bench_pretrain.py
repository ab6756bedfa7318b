#!/usr/bin/env python
"""MAE pretraining throughput, measured side by side in one process (rounds interleaved, medians reported).

  python benchmarks/bench_pretrain.py                      # CPU default: ViT-S/16 at 224, batch 8
  python benchmarks/bench_pretrain.py --arch vit_base --batch 64 --amp bf16   # on a GPU

Prints training images/s (forward + backward + AdamW step) of our MAE eager and under torch.compile (what
train.compile=true runs; the compile time is printed apart) and of Hugging Face ViTMAEForPreTraining (eager and SDPA
attention) with identical weights and sizes; the speed-up of the visible-only encoder over the encoder that also
processes mask tokens (paper Table 1(c)); and achieved model FLOP/s against a large matmul.
"""
import argparse
import copy
import statistics
import time
from contextlib import nullcontext

import torch
from torch.utils.flop_counter import FlopCounterMode

from pretrain.models_mae import build_mae


def hf_model(ours, attn: str):
    from transformers import ViTMAEConfig, ViTMAEForPreTraining
    blocks = ours.blocks
    cfg = ViTMAEConfig(hidden_size=ours.embed_dim, num_hidden_layers=len(blocks), num_attention_heads=ours.num_heads,
                       intermediate_size=blocks[0].mlp.fc1.out_features, image_size=ours.grid_size[0] * ours.patch_size,
                       patch_size=ours.patch_size, decoder_hidden_size=ours.decoder_embed.out_features,
                       decoder_num_hidden_layers=len(ours.decoder_blocks),
                       decoder_num_attention_heads=ours.decoder_blocks[0].attn.num_heads,
                       decoder_intermediate_size=ours.decoder_blocks[0].mlp.fc1.out_features, layer_norm_eps=1e-6,
                       norm_pix_loss=ours.norm_pix_loss, mask_ratio=0.75, attn_implementation=attn)
    return ViTMAEForPreTraining(cfg)


def make_step(model, imgs, call, amp_dtype):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    autocast = torch.autocast(imgs.device.type, dtype=amp_dtype) if amp_dtype else nullcontext()

    def step():
        with autocast:
            loss = call(model, imgs)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def matmul_flops_per_s(device, dtype, n: int) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    times = [timed(lambda: a @ b, device) for _ in range(5)]
    return 2 * n ** 3 / min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="vit_small")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--skip-compile", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    torch.manual_seed(0)
    imgs = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device)

    ours = build_mae(args.arch, img_size=args.img_size, norm_pix_loss=True).to(device)
    with_tokens = build_mae(args.arch, img_size=args.img_size, norm_pix_loss=True,
                            mask_tokens_in_encoder=True).to(device)
    candidates = {"maetransfer MAE": make_step(ours, imgs, lambda m, x: m(x, 0.75)[0], amp_dtype)}
    compile_s = None
    if not args.skip_compile:
        compiled = copy.deepcopy(ours)
        compiled.compile()  # as train.compile=true: nn.Module.compile, inductor's default mode
        candidates["maetransfer MAE, torch.compile"] = make_step(compiled, imgs, lambda m, x: m(x, 0.75)[0],
                                                                 amp_dtype)
        compile_s = timed(candidates["maetransfer MAE, torch.compile"], device)  # first call compiles
    candidates["maetransfer MAE, mask tokens in encoder"] = make_step(with_tokens, imgs, lambda m, x: m(x, 0.75)[0],
                                                                       amp_dtype)
    encoder_only = {
        "encoder visible-only": make_step(ours, imgs, lambda m, x: m.forward_encoder(x, 0.75)[0].float().mean(),
                                          amp_dtype),
        "encoder with mask tokens": make_step(
            with_tokens, imgs, lambda m, x: m.forward_encoder(x, 0.75)[0].float().mean(), amp_dtype)}
    if not args.skip_hf:
        for attn in ("eager", "sdpa"):
            hf = hf_model(ours, attn).to(device)
            candidates[f"HF ViTMAE ({attn})"] = make_step(hf, imgs, lambda m, x: m(pixel_values=x).loss, amp_dtype)
    everything = {**candidates, **encoder_only}

    for step in everything.values():  # warm-up (allocator, kernels, lazy inits)
        step()
    times = {name: [] for name in everything}
    for _ in range(args.rounds):
        for name, step in everything.items():
            times[name].append(timed(step, device))
    median = {name: statistics.median(t) for name, t in times.items()}

    with FlopCounterMode(display=False) as counter:
        candidates["maetransfer MAE"]()
    step_flops = counter.get_total_flops()
    peak = matmul_flops_per_s(device, amp_dtype or torch.float32, 4096 if device.type == "cuda" else 2048)

    print(f"\nMAE pretraining step, {args.arch} at {args.img_size}px, batch {args.batch}, amp {args.amp}, "
          f"device {torch.cuda.get_device_name() if device.type == 'cuda' else f'CPU ({torch.get_num_threads()} threads)'}")
    print(f"{'model':<42} {'images/s':>10} {'vs ours':>9}")
    for name in candidates:
        print(f"{name:<42} {args.batch / median[name]:>10.1f} {median[name] / median['maetransfer MAE']:>8.2f}x")
    compiled_name = "maetransfer MAE, torch.compile"
    for name in candidates:
        if name.startswith("HF"):
            print(f"speed-up of ours over {name}: {median[name] / median['maetransfer MAE']:.2f}x"
                  + (f" (compiled: {median[name] / median[compiled_name]:.2f}x)" if compile_s else ""))
    if compile_s:
        print(f"torch.compile: {median['maetransfer MAE'] / median[compiled_name]:.2f}x eager's speed, after "
              f"{compile_s:.0f} s of compilation (first step)")
    print(f"visible-only encoder speed-up over encoder with mask tokens (fwd+bwd): "
          f"{median['encoder with mask tokens'] / median['encoder visible-only']:.2f}x (paper: ~3x in FLOPs)")
    print(f"whole training step speed-up, visible-only vs mask tokens in encoder: "
          f"{median['maetransfer MAE, mask tokens in encoder'] / median['maetransfer MAE']:.2f}x")
    achieved = step_flops / median["maetransfer MAE"]
    print(f"model FLOP/s: {achieved / 1e12:.3f} TFLOP/s achieved vs {peak / 1e12:.3f} TFLOP/s large matmul "
          f"({100 * achieved / peak:.0f}%)")


if __name__ == "__main__":
    main()
