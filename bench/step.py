"""Training-step benchmark: the fast path against the reference formulation, SMA against random masking,
the share of the step spent choosing the mask, peak memory with and without activation checkpointing,
and model FLOP utilization. Prints a table; ``--json PATH`` also writes the figures.

    python bench/step.py                  # CPU, fp32: text and HIGGS shapes
    python bench/step.py --device cuda --dtype bf16
    python bench/step.py --shape image    # the paper's image shape (configs/image_8l.yaml, n = 36,864)

The image shape is the recipe's model at a reduced batch (``--image-batch``; default 1 on CPU, 8 on GPU),
with activation checkpointing as in the recipe; it has no reference run (the reference materializes
every latent's attention row over all 36,864 pixels and decodes every position).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import statistics
import sys
import threading
import time
from pathlib import Path

import psutil
import torch
from rich.console import Console
from rich.table import Table
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference import reference_first_layer_qk, reference_loss, reference_mask  # noqa: E402

from sma.config import MaskingConfig, ModelConfig, load_config  # noqa: E402
from sma.inputs import Batch  # noqa: E402
from sma.masking import num_chosen_queries  # noqa: E402
from sma.model import build_pretrain_model  # noqa: E402

# Text shapes: the paper's n = 1024 Perceiver, narrowed so one CPU step takes about a second.
TEXT_CPU = ModelConfig(modality="bytes", encoder="perceiver", max_len=1024, d_embed=128, num_latents=128,
                       d_latent=256, num_layers=6, num_heads=8, cross_heads=8, cross_qk_dim=128, decoder_dim=128,
                       decoder_heads=8)
TEXT_GPU = ModelConfig(modality="bytes", encoder="perceiver", max_len=1024, d_embed=512, num_latents=256,
                       d_latent=1024, num_layers=16, num_heads=8, cross_heads=8, cross_qk_dim=256,
                       decoder_dim=512, decoder_heads=8)
TEXT_MASKING = MaskingConfig(ratio=0.15, num_per_query=4.0, head_aggregation="mean")
# HIGGS: the paper's size (4 x 128, 8 heads, n = 28, batch 256).
HIGGS = ModelConfig(modality="continuous", d_raw=1, encoder="transformer", max_len=28, d_embed=128, num_layers=4,
                    num_heads=8, decoder_dim=128, decoder_heads=8)
HIGGS_MASKING = MaskingConfig(ratio=0.2, num_per_query=3.0, head_aggregation="random_mix", mask_self=True)
IMAGE_RECIPE = Path(__file__).resolve().parents[1] / "configs" / "image_8l.yaml"


def image_shape(resolution: int) -> tuple[ModelConfig, MaskingConfig]:
    """The image recipe's model and masking at ``resolution`` x ``resolution`` pixels; away from 192, the
    tokens per chosen latent are scaled so that 256 of the 512 latents are chosen, as at 192."""
    n = resolution * resolution
    cfg = load_config(IMAGE_RECIPE, [f"model.max_len={n}", f"masking.patch_grid=[{resolution},{resolution}]"])
    masking = dataclasses.replace(cfg.masking, num_per_query=n * cfg.masking.ratio / 256)
    return cfg.model, masking


def make_batch(cfg: ModelConfig, batch: int, device: str, seed: int = 0, full: bool = False) -> Batch:
    """Random bytes or values with uneven valid lengths (75-100% of n), as real text windows have; with
    ``full``, every token valid (images)."""
    g = torch.Generator().manual_seed(seed)
    n = cfg.max_len
    lengths = torch.full((batch,), n) if full else torch.randint(int(0.75 * n), n + 1, (batch,), generator=g)
    valid = torch.arange(n)[None, :] < lengths[:, None]
    if cfg.modality == "bytes":
        x = torch.randint(6, 262, (batch, n), generator=g) * valid
    else:
        x = torch.randn(batch, n, cfg.d_raw, generator=g) * valid[..., None]
    return Batch(x, valid).to(device)


def reference_step_loss(model, batch: Batch) -> torch.Tensor:
    """The release's computation: per-sample query draws, full first-layer attention for every query,
    per-sample top-k, additive -inf masking with eager attention, every position decoded."""
    m_cfg = model.masking
    with torch.no_grad():
        q, k = reference_first_layer_qk(model, batch.inputs)
        transformer = model.cfg.encoder == "transformer"
        rows = []
        for i in range(q.shape[0]):
            n_cand = int(batch.valid[i].sum()) if transformer else batch.valid.shape[1]
            m = int(num_chosen_queries(torch.tensor([n_cand]), m_cfg.ratio, m_cfg.num_per_query))
            pool = batch.valid[i].nonzero()[:, 0] if transformer else torch.arange(q.shape[2], device=q.device)
            rows.append(pool[torch.randperm(len(pool), device=q.device)[:m]])
        width = max(len(r) for r in rows)
        chosen = torch.stack([torch.cat([r, r.new_full((width - len(r),), -1)]) for r in rows])
        mask = reference_mask(q.float(), k.float(), batch.valid, ratio=m_cfg.ratio,
                              num_per_query=m_cfg.num_per_query, head_aggregation=m_cfg.head_aggregation,
                              mask_self=m_cfg.mask_self, chosen=chosen.cpu() if not q.is_cuda else chosen)
    return reference_loss(model, batch.inputs, batch.valid, mask)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_steps(model, batch: Batch, loss_fn, device: str, dtype: torch.dtype, steps: int, warmup: int = 2):
    """Median seconds per training step (forward + backward + AdamW), and median selection seconds."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times, selection = [], []
    for i in range(warmup + steps):
        sync(device)
        start = time.perf_counter()
        with torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32):
            out = loss_fn(model, batch)
        loss = out.loss if hasattr(out, "loss") else out
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
            selection.append(getattr(out, "selection_seconds", 0.0))
    return statistics.median(times), statistics.median(selection)


def fast_loss(model, batch):
    return model(batch)


def step_flops(model, batch: Batch, device: str, dtype: torch.dtype) -> int:
    with FlopCounterMode(display=False) as counter:
        with torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32):
            out = model(batch)
        out.loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def matmul_peak(device: str, dtype: torch.dtype, size: int = 2048, reps: int = 5) -> float:
    """FLOP/s of a large square matmul on this device: the denominator of MFU."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * size ** 3 * reps / (time.perf_counter() - start)


def _peak_rss_worker(cfg, masking, batch_size, steps, queue, full=False):
    """Runs in a fresh process: samples the resident set every millisecond while training steps run."""
    model = build_pretrain_model(cfg, masking)
    batch = make_batch(cfg, batch_size, "cpu", full=full)
    proc = psutil.Process()
    before = proc.memory_info().rss
    peak, done = [before], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    time_steps(model, batch, fast_loss, "cpu", torch.float32, steps, warmup=0)
    done.set()
    sampler.join()
    queue.put(peak[0] - before)


def peak_memory(cfg: ModelConfig, masking: MaskingConfig, batch_size: int, device: str, steps: int = 2,
                full: bool = False) -> float:
    """Peak bytes a training step adds on top of the model: allocator peak on GPU; on CPU the growth of
    the peak resident set in a fresh process (CPU tensors have no allocator statistics)."""
    if device.startswith("cuda"):
        model = build_pretrain_model(cfg, masking).to(device)
        batch = make_batch(cfg, batch_size, device, full=full)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        time_steps(model, batch, fast_loss, device, torch.bfloat16, steps, warmup=0)
        return torch.cuda.max_memory_allocated() - base
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_peak_rss_worker, args=(cfg, masking, batch_size, steps, queue, full))
    proc.start()
    result = queue.get()
    proc.join()
    return float(result)


def measure_shape(name: str, cfg: ModelConfig, masking: MaskingConfig, batch_size: int, device: str,
                  dtype: torch.dtype, steps: int, rounds: int = 3, reference: bool = True, full: bool = False,
                  warmup: int = 2) -> dict:
    """Times SMA, random masking and (with ``reference``) the reference on one shape. SMA and random
    masking alternate in ``rounds`` rounds so slow drifts of the machine (allocator growth, other load)
    hit both alike."""
    torch.manual_seed(0)
    model = build_pretrain_model(cfg, masking).to(device)
    random_model = build_pretrain_model(cfg, dataclasses.replace(masking, mode="random")).to(device)
    random_model.load_state_dict(model.state_dict())
    batch = make_batch(cfg, batch_size, device, full=full)
    fast, selection, rand = [], [], []
    for _ in range(rounds):
        t, sel = time_steps(model, batch, fast_loss, device, dtype, steps, warmup)
        fast.append(t)
        selection.append(sel)
        rand.append(time_steps(random_model, batch, fast_loss, device, dtype, steps, warmup)[0])
    ref_s = (time_steps(model, batch, reference_step_loss, device, dtype, max(2, steps // 2), warmup=1)[0]
             if reference else None)
    fast_s, sel_s, random_s = statistics.median(fast), statistics.median(selection), statistics.median(rand)
    tokens = int(batch.valid.sum())
    return {"shape": name, "batch": batch_size, "n": cfg.max_len, "fast_s": fast_s, "reference_s": ref_s,
            "random_s": random_s, "selection_s": sel_s, "tokens_per_s": tokens / fast_s,
            "speedup": ref_s / fast_s if reference else None, "guided_over_random": fast_s / random_s,
            "selection_share": sel_s / fast_s, "flops": step_flops(model, batch, device, dtype)}


def bench_text_higgs(args: argparse.Namespace, dtype: torch.dtype, peak: float, console: Console) -> dict:
    gpu = args.device.startswith("cuda")
    text_cfg = TEXT_GPU if gpu else TEXT_CPU
    text_batch = args.text_batch or (32 if gpu else 16)
    text = measure_shape("text (Perceiver)", text_cfg, TEXT_MASKING, text_batch, args.device, dtype, args.steps)
    higgs = measure_shape("HIGGS (Transformer)", HIGGS, HIGGS_MASKING, 256, args.device, dtype, args.steps)
    mfu = text["flops"] / text["fast_s"] / peak

    console.print(f"text shapes: n={text_cfg.max_len}, latents {text_cfg.num_latents} x {text_cfg.d_latent}, "
                  f"{text_cfg.num_layers} latent layers, d_embed {text_cfg.d_embed}, cross q/k {text_cfg.cross_qk_dim} "
                  f"x {text_cfg.cross_heads} heads, batch {text_batch}; HIGGS: 4 x 128, 8 heads, n=28, batch 256")
    table = Table(title="training step (forward + backward + AdamW)")
    for col in ("shape", "fast ms", "reference ms", "speedup", "random ms", "SMA / random", "selection share",
                "tokens/s", "GFLOP/step", "MFU"):
        table.add_column(col, justify="right")
    for r in (text, higgs):
        table.add_row(r["shape"], f"{r['fast_s'] * 1e3:.1f}", f"{r['reference_s'] * 1e3:.1f}", f"{r['speedup']:.2f}x",
                      f"{r['random_s'] * 1e3:.1f}", f"{r['guided_over_random']:.3f}", f"{r['selection_share']:.2%}",
                      f"{r['tokens_per_s']:,.0f}", f"{r['flops'] / 1e9:.1f}",
                      f"{r['flops'] / r['fast_s'] / peak:.1%}")
    console.print(table)
    result = {"text": text, "higgs": higgs,
              "speedup_vs_reference": text["speedup"], "speedup_vs_reference_higgs": higgs["speedup"],
              "guided_over_random": text["guided_over_random"], "selection_share": text["selection_share"],
              "mfu": mfu}
    if not args.skip_memory:
        mem = {}
        for ckpt in (False, True):
            cfg = dataclasses.replace(text_cfg, activation_checkpointing=ckpt)
            mem[ckpt] = peak_memory(cfg, TEXT_MASKING, text_batch, args.device)
        console.print(f"peak step memory (text shapes): {mem[False] / 2**20:.0f} MiB without activation "
                      f"checkpointing, {mem[True] / 2**20:.0f} MiB with it ({mem[True] / mem[False]:.2f}x)")
        result["peak_memory_bytes"] = {"no_checkpointing": mem[False], "checkpointing": mem[True]}
    return result


def bench_image(args: argparse.Namespace, dtype: torch.dtype, peak: float, console: Console) -> dict:
    """The image recipe's step (pixels as tokens) at a batch that fits the device; no reference run."""
    gpu = args.device.startswith("cuda")
    res = args.image_resolution
    cfg, masking = image_shape(res)
    batch = args.image_batch or (8 if gpu else 1)
    r = measure_shape("image (Perceiver, pixels)", cfg, masking, batch, args.device, dtype, args.steps,
                      rounds=1 if not gpu else 3, reference=False, full=True, warmup=1)
    r["mfu"] = r["flops"] / r["fast_s"] / peak
    r["resolution"] = res
    console.print(f"image shape (configs/image_8l.yaml): {res} x {res} pixels, n={cfg.max_len} tokens of 3 values, "
                  f"{cfg.num_latents} latents x {cfg.d_latent}, {cfg.num_layers} latent layers, d_embed {cfg.d_embed}, "
                  f"decoder {cfg.decoder_dim}, masking {masking.ratio} with 256 chosen latents, activation "
                  f"checkpointing; batch {batch} (the recipe: micro-batch 32, global 128), {args.steps} timed step(s)")
    table = Table(title=f"image training step (forward + backward + AdamW), batch {batch}")
    for col in ("shape", "batch", "SMA ms", "random ms", "SMA / random", "selection share", "tokens/s",
                "GFLOP/step", "MFU", "peak MiB"):
        table.add_column(col, justify="right")
    mem = None if args.skip_memory else peak_memory(cfg, masking, batch, args.device, steps=1, full=True)
    r["peak_memory_bytes"] = mem
    table.add_row(r["shape"], str(batch), f"{r['fast_s'] * 1e3:.0f}", f"{r['random_s'] * 1e3:.0f}",
                  f"{r['guided_over_random']:.3f}", f"{r['selection_share']:.2%}", f"{r['tokens_per_s']:,.0f}",
                  f"{r['flops'] / 1e9:.0f}", f"{r['mfu']:.1%}", "-" if mem is None else f"{mem / 2**20:,.0f}")
    console.print(table)
    return {"image": r}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default=None, help="default: fp32 on CPU, bf16 on GPU")
    parser.add_argument("--shape", choices=["text+higgs", "image"], default="text+higgs")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round (default 4; image: 2)")
    parser.add_argument("--text-batch", type=int, default=None, help="default: 16 on CPU, 32 on GPU")
    parser.add_argument("--image-batch", type=int, default=None, help="default: 1 on CPU, 8 on GPU")
    parser.add_argument("--image-resolution", type=int, default=192, help="image side in pixels (default 192)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args(argv)
    args.steps = args.steps or (2 if args.shape == "image" else 4)
    gpu = args.device.startswith("cuda")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype or ("bf16" if gpu else "fp32")]
    peak = matmul_peak(args.device, dtype)
    console = Console(width=170)
    console.print(f"device={args.device} dtype={dtype} threads={torch.get_num_threads()} "
                  f"matmul peak={peak / 1e9:.0f} GFLOP/s")
    bench = bench_image if args.shape == "image" else bench_text_higgs
    result = {"device": args.device, "dtype": str(dtype), "matmul_peak_flops": peak,
              **bench(args, dtype, peak, console)}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
