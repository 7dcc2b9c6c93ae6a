"""Training and evaluation throughput of TailCLIP against a paper-equivalent path.

Generates synthetic JPEGs of VOC size (500x375) in the VOC-MLT layout (reused across runs),
then measures in one process, on the same data and from the same initial weights:

- input pipeline, images/s: the decoded-image cache (uint8 memmap, flip and normalise as a
  batch) vs a JPEG DataLoader (decode, resize, flip, normalise per image in worker processes);
- training, images/s: ours (``--precision``, ``--input cache|loader``, fused AdamW on CUDA,
  TF32) vs the paper path (float32, JPEG DataLoader, plain AdamW, PyTorch's default TF32 flags);
- evaluation of the test split, images/s: ours (batches of ``--eval-batch-size``, prompts
  encoded once, scores kept on the device) vs the paper path (JPEG DataLoader, one image per
  forward pass in a Python loop, prompts also encoded once);
- peak memory (``torch.cuda.max_memory_allocated`` per phase on a GPU; the process's
  ``ru_maxrss`` so far on the CPU) and model FLOP utilisation: forward+backward FLOPs of one
  training step (``FlopCounterMode``) x steps/s over the device's peak FLOP/s for the math
  used (spec sheet for known GPUs, a matmul measured in-process on the CPU).

    python bench/bench_train.py --device cpu          # ViT-tiny at 64 px, under 3 minutes
    python bench/bench_train.py --device cuda --model ViT-B/16 --batch-size 64 --json out.json
"""
import argparse
import copy
import json
import os
import platform
import resource
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import clip  # noqa: E402
from tailclip.config import Config  # noqa: E402
from tailclip.data import MEANS_STDS, BalancedSampler, build_data  # noqa: E402
from tailclip.data.cache import CachedImages, CachedMultiLabelDataset, to_model_input  # noqa: E402
from tailclip.model import TailCLIP  # noqa: E402
from tailclip.optim import build_optimizer  # noqa: E402
from tailclip.precision import autocast, grad_scaler, resolve_precision  # noqa: E402

VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor"]
VOC_SIZE = (500, 375)
DATA_VERSION = 1
# Dense (no sparsity) peak TFLOP/s from NVIDIA's spec sheets, by math mode; the first name
# contained in torch.cuda.get_device_name() wins, so longer names come first.
GPU_PEAK_TFLOPS = [
    ("H200 NVL", {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    ("H200", {"bf16": 989.5, "fp16": 989.5, "tf32": 494.5, "fp32": 67.0}),
    ("H100 NVL", {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    ("H100 PCIe", {"bf16": 756.5, "fp16": 756.5, "tf32": 378.0, "fp32": 51.2}),
    ("H100", {"bf16": 989.5, "fp16": 989.5, "tf32": 494.5, "fp32": 67.0}),
    ("A100", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.0, "fp16": 362.0, "tf32": 183.0, "fp32": 91.6}),
    ("L4", {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3}),
]


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------- data
def write_image(path: Path, seed: int, noise_bank: list[np.ndarray]) -> None:
    """A smooth random colour field plus sensor-like noise: about 100 KB as a quality-90 JPEG,
    which decodes at about the speed of a VOC photograph."""
    rng = np.random.default_rng(seed)
    field = Image.fromarray(rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)).resize(VOC_SIZE, Image.BICUBIC)
    noise = np.roll(noise_bank[seed % len(noise_bank)], int(rng.integers(VOC_SIZE[0])), axis=1)
    pixels = np.clip(np.asarray(field, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


def label_sets(count: int, rng: np.random.Generator) -> list[list[int]]:
    """1-3 classes per image with long-tailed class frequencies; every class appears."""
    popularity = 0.8 ** np.arange(len(VOC_CLASSES))
    sets = [[c] for c in range(min(count, len(VOC_CLASSES)))]
    for _ in range(count - len(sets)):
        size = int(rng.integers(1, 4))
        sets.append(sorted(rng.choice(len(VOC_CLASSES), size, replace=False, p=popularity / popularity.sum()).tolist()))
    return [sets[i] for i in rng.permutation(count)]


def generate_data(root: Path, train_images: int, test_images: int, threads: int) -> Path:
    """Split, label and caption files and JPEGs in VOC-MLT's layout under ``root`` (reused when
    present with the same parameters)."""
    marker = root / "bench_data.json"
    spec = {"version": DATA_VERSION, "train": train_images, "test": test_images}
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return root
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    noise_bank = [rng.normal(0, 22, (VOC_SIZE[1], VOC_SIZE[0], 3)).astype(np.int16) for _ in range(4)]
    splits = {"train": ("VOCdevkit/VOC2012/JPEGImages/2012_{:06d}.jpg", train_images),
              "test": ("VOCdevkit/VOC2007/JPEGImages/{:06d}.jpg", test_images)}
    jobs = []
    for split, (pattern, count) in splits.items():
        (root / pattern).parent.mkdir(parents=True, exist_ok=True)
        lines = []
        for i, labels in enumerate(label_sets(count, rng)):
            relative = pattern.format(i)
            lines.append(" ".join([relative, *map(str, labels)]))
            jobs.append((root / relative, len(jobs)))
        (root / f"voc_lt_{split}.txt").write_text("\n".join(lines) + "\n")
    train_paths = [line.split()[0] for line in (root / "voc_lt_train.txt").read_text().splitlines()]
    (root / "voc_lt_captions.txt").write_text("".join(f"{p} a synthetic photo\n" for p in train_paths))
    (root / "voc_labels.txt").write_text("".join(f"{name} {i}\n" for i, name in enumerate(VOC_CLASSES)))
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda job: write_image(job[0], job[1], noise_bank), jobs))
    marker.write_text(json.dumps(spec))
    say(f"generated {len(jobs)} JPEGs of {VOC_SIZE[0]}x{VOC_SIZE[1]} in {time.perf_counter() - start:.1f} s")
    return root


# ------------------------------------------------------------------------------ measuring
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float:
    """Peak memory since the last reset on a GPU; on the CPU the process's peak RSS so far."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux


def cpu_matmul_peak(dtype: torch.dtype, seconds: float = 1.0, n: int = 1024) -> float:
    """FLOP/s of a square matmul on this CPU with the current thread count (the practical peak)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    repeats, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        repeats += 1
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def math_mode(precision: str, device: torch.device) -> str:
    """What the matmuls run in: bf16/fp16, or tf32 when float32 matmuls may use TF32."""
    if precision == "fp32" and device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return precision


def peak_flops(device: torch.device, math: str, override_tflops: float | None) -> tuple[float | None, str]:
    """(peak FLOP/s, where the number comes from) for the device and math mode."""
    if override_tflops:
        return override_tflops * 1e12, "--peak-tflops"
    if device.type == "cpu":
        dtype = torch.bfloat16 if math == "bf16" else torch.float32
        return cpu_matmul_peak(dtype), f"measured {dtype} matmul, {torch.get_num_threads()} threads"
    name = torch.cuda.get_device_name(device)
    for key, peaks in GPU_PEAK_TFLOPS:
        if key in name:
            return peaks[math] * 1e12, f"{key} spec sheet, dense {math}"
    return None, f"unknown GPU {name!r}: pass --peak-tflops"


def count_training_flops(model, images, tokens, targets, precision, device) -> int:
    """FLOPs of one forward and backward pass (matmuls, convolutions, attention)."""
    with FlopCounterMode(display=False) as counter:
        with autocast(precision, device):
            loss = model(images, tokens, targets)["loss"]
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


# ------------------------------------------------------------------------------ pipelines
class Inputs:
    """Turns a loader batch into model inputs on the device (the cached path flips and
    normalises there; the JPEG path arrives normalised and only moves)."""

    def __init__(self, device, mean, std, cached: bool, train: bool, channels_last: bool, seed: int = 0):
        self.device, self.mean, self.std = device, mean, std
        self.cached, self.train, self.channels_last = cached, train, channels_last
        self.generator = torch.Generator(device).manual_seed(seed)

    def __call__(self, batch):
        images, targets, tokens, _ = batch
        images = images.to(self.device, non_blocking=True)
        if self.cached:
            images = to_model_input(images, self.mean, self.std, flip=self.train, generator=self.generator)
        elif self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, tokens.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True)


def cached_loader(dataset: CachedMultiLabelDataset, sampler, batch_size: int, pin: bool) -> DataLoader:
    """One memmap read per batch, in the main process (it is cheaper than a worker hand-off)."""
    return DataLoader(dataset, sampler=BatchSampler(sampler, batch_size, drop_last=False),
                      batch_size=None, pin_memory=pin)


def jpeg_loader(dataset, batch_size: int, workers: int, sampler=None, fast: bool = False) -> DataLoader:
    """A DataLoader decoding JPEGs; ``fast`` adds what the cache-off path of ours uses."""
    options = dict(pin_memory=True, persistent_workers=True, prefetch_factor=4) if fast and workers else {}
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, **options)


def time_input(loader: DataLoader, to_input, device, min_seconds: float = 1.0) -> float:
    """Images/s of producing model inputs, whole passes over the loader for ``min_seconds``."""
    images, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        for batch in loader:
            images += len(to_input(batch)[0])
    synchronize(device)
    return images / (time.perf_counter() - start)


def time_training(model, optimizer, loader, to_input, precision, device, warmup: int, steps: int) -> float:
    """Images/s of ``steps`` training steps after ``warmup`` steps."""
    scaler = grad_scaler(precision, device)
    batches, images = iter(loader), 0
    model.train()
    for step in range(warmup + steps):
        if step == warmup:
            synchronize(device)
            start = time.perf_counter()
        images_, tokens, targets = to_input(next(batches))
        with autocast(precision, device):
            loss = model(images_, tokens, targets)["loss"]
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        images += len(images_) if step >= warmup else 0
    synchronize(device)
    return images / (time.perf_counter() - start)


@torch.inference_mode()
def evaluate_batched(model, loader, to_input, precision, device) -> torch.Tensor:
    """Scores [N, C]: prompts encoded once, scores stay on the device until the end."""
    model.eval()
    with autocast(precision, device):
        label_emb = model.encode_labels()
        scores = [model.predict_scores(to_input(batch)[0], label_emb).float() for batch in loader]
    return torch.cat(scores).cpu()


@torch.inference_mode()
def evaluate_per_image(model, loader, device) -> torch.Tensor:
    """The paper's loop: one image per forward pass, each score row moved to the CPU."""
    model.eval()
    label_emb = model.encode_labels()
    rows = []
    for images, *_ in loader:
        for image in images:
            rows.append(model.predict_scores(image[None].to(device), label_emb).cpu())
    return torch.cat(rows)


def timed(function, device):
    """(result, seconds, peak memory MiB) of ``function()``."""
    reset_peak_memory(device)
    synchronize(device)
    start = time.perf_counter()
    result = function()
    synchronize(device)
    return result, time.perf_counter() - start, peak_memory_mib(device)


# ---------------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="ViT-tiny", help="ViT-tiny, RN-tiny, RN50, ViT-B/16, ...")
    parser.add_argument("--size", type=int, default=None, help="image size (default: the model's resolution)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"], default="auto")
    parser.add_argument("--input", choices=["cache", "loader"], default="cache", help="ours: input pipeline")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per path")
    parser.add_argument("--warmup", type=int, default=3, help="untimed training steps per path")
    parser.add_argument("--train-images", type=int, default=512)
    parser.add_argument("--test-images", type=int, default=4952, help="VOC-MLT's test split has 4,952")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="DataLoader workers")
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "tailclip-bench")
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the device's peak")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    return parser.parse_args(argv)


def build(args, device):
    """The config, data bundle and a model with fixed initial weights."""
    size = args.size or clip.model_resolution(args.model)
    root = generate_data(args.data_dir, args.train_images, args.test_images, threads=max(2, args.workers))
    cfg = Config(dataset="custom", train_list=str(root / "voc_lt_train.txt"), test_list=str(root / "voc_lt_test.txt"),
                 class_names=str(root / "voc_labels.txt"), captions=str(root / "voc_lt_captions.txt"),
                 image_root=str(root), model_name=args.model, pretrained=False, size=size,
                 batch_size=args.batch_size, eval_batch_size=args.eval_batch_size, num_workers=args.workers,
                 lr=1e-5, device=str(device), precision=args.precision)
    data = build_data(cfg)
    torch.manual_seed(cfg.seed)
    label_tokens = clip.tokenize(data.label_prompts, context_length=cfg.max_length)
    model = TailCLIP(clip.create_model(args.model), label_tokens, cfg, data.class_weights)
    return cfg, data, model


def run(args) -> dict:
    device = torch.device(args.device)
    cfg, data, initial_model = build(args, device)
    precision = resolve_precision(args.precision, device)
    mean, std = MEANS_STDS[cfg.normalize]
    channels_last = isinstance(initial_model.clip_model.visual, clip.model.ModifiedResNet)
    pin = device.type == "cuda"
    steps_images = (args.warmup + args.steps) * cfg.batch_size
    sampler = BalancedSampler(data.sample_weights, max(len(data.train), steps_images), cfg.seed, cfg.batch_size)

    def fresh_model(ours: bool):
        model = copy.deepcopy(initial_model).to(device)
        return model.to(memory_format=torch.channels_last) if ours and channels_last else model

    results = {"ours": {}, "paper": {}}

    # Input pipeline ------------------------------------------------------------------------
    say(f"caching {len(data.train)} + {len(data.test)} images at {cfg.size}px ...")
    cache_dir = args.data_dir / ".cache"
    start = time.perf_counter()
    train_cache = CachedImages([data.train.image_path(i) for i in range(len(data.train))], cfg.size, cache_dir, "train")
    test_cache = CachedImages([data.test.image_path(i) for i in range(len(data.test))], cfg.size, cache_dir, "test")
    results["cache_open_s"] = time.perf_counter() - start
    cached_train = CachedMultiLabelDataset(train_cache, data.train.targets, data.train.caption_tokens)
    cached_test = CachedMultiLabelDataset(test_cache, data.test.targets, data.test.caption_tokens)
    train_inputs = Inputs(device, mean, std, cached=True, train=True, channels_last=channels_last)
    jpeg_inputs = Inputs(device, mean, std, cached=False, train=True, channels_last=False)

    say("input pipeline ...")
    results["ours"]["input_images_per_s"] = time_input(
        cached_loader(cached_train, SequentialSampler(cached_train), cfg.batch_size, pin), train_inputs, device)
    results["paper"]["input_images_per_s"] = time_input(
        jpeg_loader(data.train, cfg.batch_size, args.workers), jpeg_inputs, device)

    # Training ------------------------------------------------------------------------------
    model = fresh_model(ours=True)
    probe = train_inputs(next(iter(cached_loader(cached_train, SequentialSampler(cached_train), cfg.batch_size, pin))))
    flops_per_image = count_training_flops(model, *probe, precision, device) / cfg.batch_size
    results["train_flops_per_image"] = flops_per_image

    if args.input == "cache":
        ours_loader, ours_inputs = cached_loader(cached_train, sampler, cfg.batch_size, pin), train_inputs
    else:
        ours_loader = jpeg_loader(data.train, cfg.batch_size, args.workers, sampler, fast=True)
        ours_inputs = Inputs(device, mean, std, cached=False, train=True, channels_last=channels_last)
    say(f"training, ours ({precision}, {args.input}) ...")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    optimizer = build_optimizer(cfg, model.parameters(), device)
    rate, _, memory = timed(lambda: time_training(model, optimizer, ours_loader, ours_inputs, precision, device,
                                                  args.warmup, args.steps), device)
    results["ours"].update(train_images_per_s=rate, train_peak_mib=memory, train_math=math_mode(precision, device))
    del model, optimizer

    say("training, paper path (fp32, JPEG DataLoader) ...")
    if device.type == "cuda":  # PyTorch's defaults, as the paper's code ran
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True
    model = fresh_model(ours=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-9,
                                  weight_decay=cfg.weight_decay)
    rate, _, memory = timed(lambda: time_training(model, optimizer, jpeg_loader(data.train, cfg.batch_size,
                                                                                args.workers, sampler),
                                                  jpeg_inputs, "fp32", device, args.warmup, args.steps), device)
    results["paper"].update(train_images_per_s=rate, train_peak_mib=memory, train_math=math_mode("fp32", device))
    del model, optimizer

    # Evaluation (same initial weights for both paths) -------------------------------------------
    model = fresh_model(ours=True)
    if args.input == "cache":
        eval_loader = cached_loader(cached_test, SequentialSampler(cached_test), cfg.eval_batch_size, pin)
        eval_inputs = Inputs(device, mean, std, cached=True, train=False, channels_last=channels_last)
    else:
        eval_loader = jpeg_loader(data.test, cfg.eval_batch_size, args.workers, fast=True)
        eval_inputs = Inputs(device, mean, std, cached=False, train=False, channels_last=channels_last)
    say(f"evaluation, ours (batched, {args.input}) over {len(data.test)} images ...")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    ours_scores, seconds, memory = timed(lambda: evaluate_batched(model, eval_loader, eval_inputs, precision, device),
                                         device)
    results["ours"].update(eval_images_per_s=len(data.test) / seconds, eval_seconds=seconds, eval_peak_mib=memory)

    say("evaluation, paper path (per-image loop, JPEG DataLoader) ...")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True
    model = fresh_model(ours=False)
    paper_scores, seconds, memory = timed(lambda: evaluate_per_image(model, jpeg_loader(data.test, 1, args.workers),
                                                                     device), device)
    results["paper"].update(eval_images_per_s=len(data.test) / seconds, eval_seconds=seconds, eval_peak_mib=memory)
    results["eval_scores_max_abs_diff"] = (ours_scores - paper_scores).abs().max().item()

    # Utilisation and ratios -----------------------------------------------------------------
    for path in ("ours", "paper"):
        peak, source = peak_flops(device, results[path]["train_math"], args.peak_tflops)
        achieved = flops_per_image * results[path]["train_images_per_s"]
        results[path].update(train_tflops=achieved / 1e12, peak_tflops=peak and peak / 1e12, peak_source=source,
                             mfu=peak and achieved / peak)
    results["ratios"] = {key: results["ours"][f"{key}_images_per_s"] / results["paper"][f"{key}_images_per_s"]
                         for key in ("input", "train", "eval")}
    return results


def environment(args) -> dict:
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    if device.type == "cpu" and Path("/proc/cpuinfo").exists():
        models = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")]
        name = models[0] if models else name
    return {"device": name, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "command": "python bench/bench_train.py " + " ".join(sys.argv[1:])}


def report(args, env: dict, results: dict) -> str:
    ours, paper = results["ours"], results["paper"]

    def mfu(path):
        return "n/a" if path["mfu"] is None else f"{100 * path['mfu']:.1f}%"

    rows = [
        ("input pipeline", f"cache -> {args.device}", ours["input_images_per_s"], "", "", ""),
        ("input pipeline", "JPEG DataLoader", paper["input_images_per_s"], "", "", ""),
        ("training", f"ours {ours['train_math']} {args.input}", ours["train_images_per_s"],
         f"{ours['train_peak_mib']:.0f}", f"{ours['train_tflops']:.3f}", mfu(ours)),
        ("training", "paper fp32 JPEG", paper["train_images_per_s"], f"{paper['train_peak_mib']:.0f}",
         f"{paper['train_tflops']:.3f}", mfu(paper)),
        ("evaluation", f"ours batched {args.eval_batch_size}", ours["eval_images_per_s"],
         f"{ours['eval_peak_mib']:.0f}", "", ""),
        ("evaluation", "paper per-image", paper["eval_images_per_s"], f"{paper['eval_peak_mib']:.0f}", "", ""),
    ]
    lines = [f"{args.model} at {args.size or clip.model_resolution(args.model)}px, batch {args.batch_size}, "
             f"{env['device']} ({env['torch_threads']} threads), torch {env['torch']}",
             f"{'phase':<15} {'path':<26} {'images/s':>10} {'peak MiB':>9} {'TFLOP/s':>8} {'MFU':>6}"]
    lines += [f"{a:<15} {b:<26} {c:>10.1f} {d:>9} {e:>8} {f:>6}" for a, b, c, d, e, f in rows]
    ratios = results["ratios"]
    lines += ["", f"ratios (ours / paper): input {ratios['input']:.1f}x, training {ratios['train']:.2f}x, "
                  f"evaluation {ratios['eval']:.2f}x",
              f"evaluation of {args.test_images} images: ours {ours['eval_seconds']:.1f} s, "
              f"paper {paper['eval_seconds']:.1f} s; max |score difference| {results['eval_scores_max_abs_diff']:.2e}",
              f"training FLOPs/image (fwd+bwd) {results['train_flops_per_image'] / 1e9:.3f} GFLOP; "
              f"peak: {ours['peak_source']}",
              f"cache open/build {results['cache_open_s']:.1f} s (first run builds it)"]
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    env = environment(args)
    results = run(args)
    results["total_seconds"] = time.perf_counter() - start
    print(report(args, env, results))
    print(f"total {results['total_seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) if isinstance(v, Path) else v
                                                  for k, v in vars(args).items()},
                                         "environment": env, "results": results}, indent=2))


if __name__ == "__main__":
    main()
