"""Training and evaluation throughput of TailCLIP against a paper-equivalent path.

Generates synthetic JPEGs of VOC size (500x375) in the VOC-MLT layout (kept in ``--data-dir``
and reused), then measures in one process, on the same data and from the same initial weights:

- input pipeline, images/s: ours (our batches: decoded-image cache, flip and
  normalise on the device as a batch; or with ``--input loader`` its tuned JPEG DataLoader) vs
  the paper's JPEG DataLoader (decode, resize, flip, normalise per image in worker processes);
- training, images/s: ours (``training.train_step``, ``--precision``, fused AdamW, text
  tower cut at the last end-of-text token, TF32 on CUDA with ``--tf32``, channels-last ResNets) vs the paper
  path (same step in float32 over the whole 77-token context, JPEG DataLoader, plain AdamW,
  PyTorch's default TF32 flags);
- evaluation of the test split, images/s: ours (``evaluation.evaluate_model``: batched, prompts
  encoded once, scores kept on the device) vs the paper path (JPEG DataLoader, one image per
  forward pass in a Python loop, prompts also encoded once); both end with the same metrics;
- peak memory (``torch.cuda.max_memory_allocated`` per phase on a GPU; on the CPU the process's
  peak RSS so far) and model FLOP utilisation: forward+backward FLOPs of one training step
  (``FlopCounterMode``) x steps/s over the device's peak FLOP/s for the math used (NVIDIA's
  dense spec figures for known GPUs, a matmul measured in-process on the CPU).

    python bench/bench_train.py --device cpu      # ViT-tiny at 64 px, 4,952 test images
    python bench/bench_train.py --device cuda --model ViT-B/16 --batch-size 64 --json out.json
"""
import argparse
import copy
import dataclasses
import itertools
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
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import clip  # noqa: E402
from tailclip import factory, training_state  # noqa: E402
from tailclip.config import Config  # noqa: E402
from tailclip.data import BalancedSampler, build_data  # noqa: E402
from tailclip.engine import evaluation, setup, training
from tailclip.engine.batches import SplitBatches, build_split_batches  # noqa: E402
from tailclip.engine.optim import build_optimizer, build_scheduler  # noqa: E402
from tailclip.engine.precision import PER_OPERATOR_TF32, autocast, grad_scaler, resolve_precision, set_tf32, tf32_flags  # noqa: E402
from tailclip.metrics import (
    evaluate,  # noqa: E402
    scores_from_logits,  # noqa: E402
)

VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor"]
VOC_SIZE = (500, 375)
DATA_VERSION = 1
# Dense (no sparsity) peak TFLOP/s from NVIDIA's data sheets, per math mode. The first name
# contained in torch.cuda.get_device_name() wins, so the longer names come first.
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


# ---------------------------------------------------------------------------------------- data
def write_image(path: Path, seed: int, noise_bank: list[np.ndarray]) -> None:
    """A smooth random colour field plus sensor-like noise: about 100 KB as a quality-90 JPEG,
    which decodes about as fast as a VOC photograph."""
    rng = np.random.default_rng(seed)
    field = Image.fromarray(rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)).resize(VOC_SIZE, Image.BICUBIC)
    noise = np.roll(noise_bank[seed % len(noise_bank)], int(rng.integers(VOC_SIZE[0])), axis=1)
    pixels = np.clip(np.asarray(field, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


def label_sets(count: int, rng: np.random.Generator) -> list[list[int]]:
    """1-3 classes per image, long-tailed class frequencies, every class present."""
    popularity = 0.8 ** np.arange(len(VOC_CLASSES))
    sets = [[c] for c in range(min(count, len(VOC_CLASSES)))]
    for _ in range(count - len(sets)):
        size = int(rng.integers(1, 4))
        sets.append(sorted(rng.choice(len(VOC_CLASSES), size, replace=False,
                                      p=popularity / popularity.sum()).tolist()))
    return [sets[i] for i in rng.permutation(count)]


def generate_data(root: Path, train_images: int, test_images: int, threads: int) -> Path:
    """VOC-MLT's files (``voc_lt_train.txt``, ``voc_lt_test.txt``, ``voc_lt_captions.txt``,
    ``voc_labels.txt``) and JPEGs under ``VOCdevkit/``; reused when already generated."""
    marker = root / "bench_data.json"
    spec = {"version": DATA_VERSION, "train": train_images, "test": test_images}
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return root
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    noise_bank = [rng.normal(0, 22, (VOC_SIZE[1], VOC_SIZE[0], 3)).astype(np.int16) for _ in range(4)]
    splits = {"train": ("VOCdevkit/VOC2012/JPEGImages/2012_{:06d}.jpg", train_images),
              "test": ("VOCdevkit/VOC2007/JPEGImages/{:06d}.jpg", test_images)}
    jobs, train_paths = [], []
    for split, (pattern, count) in splits.items():
        (root / pattern).parent.mkdir(parents=True, exist_ok=True)
        lines = []
        for i, labels in enumerate(label_sets(count, rng)):
            relative = pattern.format(i)
            lines.append(" ".join([relative, *map(str, labels)]))
            jobs.append((root / relative, len(jobs)))
            if split == "train":
                train_paths.append(relative)
        (root / f"voc_lt_{split}.txt").write_text("\n".join(lines) + "\n")
    (root / "voc_lt_captions.txt").write_text("".join(f"{p} a synthetic photo\n" for p in train_paths))
    (root / "voc_labels.txt").write_text("".join(f"{name} {i}\n" for i, name in enumerate(VOC_CLASSES)))
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda job: write_image(job[0], job[1], noise_bank), jobs))
    marker.write_text(json.dumps(spec))
    say(f"generated {len(jobs)} JPEGs of {VOC_SIZE[0]}x{VOC_SIZE[1]} in {time.perf_counter() - start:.0f} s")
    return root


# ------------------------------------------------------------------------------------ devices
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mib(device: torch.device) -> float:
    """Peak since the last reset on a GPU; on the CPU the process's peak RSS so far."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux


# PyTorch's defaults, what the paper ran with: both views of the matmul flag, as `set_tf32`
# writes both.
PYTORCH_TF32_FLAGS = tf32_flags()
PYTORCH_MATMUL_ALLOWS_TF32 = torch.backends.cuda.matmul.allow_tf32


def use_tf32_flags(device: torch.device, tf32: bool) -> None:
    """PyTorch's default TF32 flags, then TF32 allowed if ``tf32`` (``training.train``'s
    ``set_tf32(cfg.tf32, device)``): the paper path passes False."""
    torch.backends.cuda.matmul.allow_tf32 = PYTORCH_MATMUL_ALLOWS_TF32
    if PER_OPERATOR_TF32:
        torch.backends.cuda.matmul.fp32_precision = PYTORCH_TF32_FLAGS["matmul"]
        torch.backends.cudnn.conv.fp32_precision = PYTORCH_TF32_FLAGS["conv"]
    else:
        torch.backends.cudnn.allow_tf32 = PYTORCH_TF32_FLAGS["conv"] == "tf32"
    set_tf32(tf32, device)


def math_mode(precision: str, device: torch.device) -> str:
    """What the matmuls run in: bf16/fp16, tf32 when float32 matmuls may use TF32, or fp32."""
    if precision == "fp32" and device.type == "cuda" and tf32_flags()["matmul"] == "tf32":
        return "tf32"
    return precision


def cpu_matmul_peak(dtype: torch.dtype, seconds: float = 1.0, n: int = 1024) -> float:
    """FLOP/s of a square matmul with the current thread count: the CPU's practical peak."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    repeats, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        repeats += 1
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def peak_flops(device: torch.device, math: str, override_tflops: float | None) -> tuple[float | None, str]:
    """(peak FLOP/s or None, where the figure comes from) for the device and math mode."""
    if override_tflops:
        return override_tflops * 1e12, "--peak-tflops"
    if device.type == "cpu":
        dtype = torch.bfloat16 if math == "bf16" else torch.float32
        threads = torch.get_num_threads()
        return cpu_matmul_peak(dtype), f"{str(dtype)[6:]} matmul measured with {threads} torch threads"
    name = torch.cuda.get_device_name(device)
    for key, peaks in GPU_PEAK_TFLOPS:
        if key in name:
            return peaks[math] * 1e12, f"{key} data sheet, dense {math}"
    return None, f"unknown GPU {name!r}: pass --peak-tflops"


def count_training_flops(model, objective, images, targets, tokens, precision, device) -> int:
    """FLOPs of one forward and backward pass (matmuls, convolutions, attention)."""
    with FlopCounterMode(display=False) as counter:
        with autocast(precision, device):
            loss = objective(**model(images, tokens), targets=targets)["loss"]
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


# ---------------------------------------------------------------------------------- the paths
def jpeg_batches(loader: DataLoader, device: torch.device, epochs=None):
    """The paper's input: a DataLoader over the JPEG dataset, batches moved to the device;
    ``epochs`` (default: endless) sets the balanced sampler's epoch."""
    for epoch in itertools.count() if epochs is None else epochs:
        if isinstance(loader.sampler, BalancedSampler):
            loader.sampler.set_epoch(epoch)
        for images, targets, tokens, index in loader:
            yield images.to(device), targets.to(device), tokens.to(device), index


def our_batches(split: SplitBatches, device: torch.device):
    """Ours: our batches, epoch after epoch."""
    for epoch in itertools.count():
        yield from split.batches(device, epoch)


def images_per_s(batches, device, seconds: float = 3.0, warmup: int = 2) -> float:
    """Images/s of drawing batches for ``seconds`` (after ``warmup`` untimed batches)."""
    for _ in range(warmup):
        next(batches)
    images, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        images += len(next(batches)[0])
    synchronize(device)
    return images / (time.perf_counter() - start)


def train_images_per_s(trainer: training.Trainer, batches, warmup: int, steps: int) -> float:
    """Images/s of ``steps`` steps of ``training.train_step`` after ``warmup`` untimed ones."""
    state, images = training_state.TrainState(), 0
    trainer.model.train()
    for step in range(warmup + steps):
        if step == warmup:
            synchronize(trainer.device)
            start = time.perf_counter()
        batch_images, targets, tokens, _ = next(batches)
        training.train_step(trainer, batch_images, targets, tokens, state, epoch=0)
        images += len(targets) if step >= warmup else 0
    synchronize(trainer.device)
    return images / (time.perf_counter() - start)


@torch.inference_mode()
def evaluate_per_image(model, batches, groups) -> torch.Tensor:
    """The paper's evaluation loop: one image per forward pass, each score row moved to the CPU."""
    model.eval()
    label_emb = model.encode_labels()
    scores, targets = [], []
    for images, batch_targets, _, _ in batches:
        for image, target in zip(images, batch_targets):
            scores.append(scores_from_logits(model.predict_logits(image[None], label_emb), model.score_kind).cpu())
            targets.append(target[None].cpu())
    scores = torch.cat(scores)
    evaluate(scores, torch.cat(targets), groups)
    return scores


def timed(function, device: torch.device):
    """(result, seconds, peak memory MiB) of ``function()``."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    start = time.perf_counter()
    result = function()
    synchronize(device)
    return result, time.perf_counter() - start, peak_memory_mib(device)


# ---------------------------------------------------------------------------------- the bench
@dataclasses.dataclass
class Bench:
    args: argparse.Namespace
    device: torch.device
    cfg: Config  # ours
    data: object  # tailclip.data.DataBundle
    initial_model: torch.nn.Module  # on the CPU; each path starts from a copy
    objective: torch.nn.Module  # the model's, on the device
    precision: str  # ours

    @classmethod
    def build(cls, args) -> "Bench":
        device = torch.device(args.device)
        root = generate_data(args.data_dir, args.train_images, args.test_images, threads=max(2, args.workers))
        cfg = Config(dataset="custom", train_list=str(root / "voc_lt_train.txt"),
                     test_list=str(root / "voc_lt_test.txt"), class_names=str(root / "voc_labels.txt"),
                     captions=str(root / "voc_lt_captions.txt"), image_root=str(root),
                     model_name=args.model, pretrained=False, size=args.size or clip.model_resolution(args.model),
                     interpolate_pos_embedding=args.size is not None, batch_size=args.batch_size,
                     eval_batch_size=args.eval_batch_size, num_workers=args.ours_workers, lr=1e-5,
                     device=args.device, precision=args.precision, tf32=args.tf32,
                     image_cache=args.input == "cache",
                     compile=args.compile)
        data = build_data(cfg)
        factory.seed_everything(cfg.seed)
        model = factory.build_model(cfg, data.label_prompts)
        objective = factory.build_objective(cfg, model, data.class_weights, data.class_priors).to(device)
        return cls(args, device, cfg, data, model, objective, resolve_precision(cfg.precision, device))

    def model(self, ours: bool):
        model = copy.deepcopy(self.initial_model).to(self.device)
        if not ours:  # OpenAI's code runs the text tower over all 77 positions
            full_context = clip.tokenize(self.data.label_prompts, context_length=self.cfg.max_length)
            model.label_tokens = full_context.to(self.device)
        resnet = not isinstance(model.clip_model.visual, clip.model.VisionTransformer)
        if ours and resnet and self.device.type == "cuda":  # as training.train
            model = model.to(memory_format=torch.channels_last)
        return model

    def paper_loader(self, train: bool) -> DataLoader:
        """The paper's DataLoader: JPEGs decoded per epoch, workers restarted each epoch; the
        test split one image at a time."""
        if train:
            sampler = BalancedSampler(self.data.sample_weights, len(self.data.train), self.cfg.seed,
                                      self.cfg.batch_size)
            return DataLoader(self.data.train, self.cfg.batch_size, sampler=sampler,
                              num_workers=self.args.workers)
        return DataLoader(self.data.test, 1, num_workers=self.args.workers)

    def input_pipeline(self) -> dict:
        say(f"input pipeline: ours ({self.args.input}) ...")
        start = time.perf_counter()  # with the cache: built on the first run, opened afterwards
        ours = build_split_batches(self.cfg, self.data, train=True, device=self.device)
        build_split_batches(self.cfg, self.data, train=False, device=self.device)
        setup_seconds = time.perf_counter() - start
        ours_rate = images_per_s(our_batches(ours, self.device), self.device)
        say("input pipeline: paper (JPEG DataLoader) ...")
        paper_rate = images_per_s(jpeg_batches(self.paper_loader(train=True), self.device), self.device)
        return {"ours": ours_rate, "paper": paper_rate, "ours_setup_seconds": setup_seconds}

    def _train(self, model, optimizer, precision: str, batches, compile_model: bool = False) -> dict:
        """Images/s and peak memory of training ``model`` with our step (through
        ``torch.compile`` as ``training.train`` with ``compile_model``)."""
        forward, objective = model, self.objective
        if compile_model:
            forward, objective = setup.compile_forward(forward), setup.compile_forward(objective)
        trainer = training.Trainer(model, forward, objective, optimizer, build_scheduler(self.cfg, optimizer),
                                   grad_scaler(precision, self.device), precision, self.device, 0)
        rate, _, memory = timed(lambda: train_images_per_s(trainer, batches, self.args.warmup, self.args.steps),
                                self.device)
        return {"images_per_s": rate, "peak_mib": memory, "math": math_mode(precision, self.device)}

    def training(self) -> dict:
        say(f"training: ours ({self.precision}{', tf32' if self.cfg.tf32 else ''}, {self.args.input}"
            f"{', compiled' if self.cfg.compile else ''}) ...")
        use_tf32_flags(self.device, self.cfg.tf32)
        model = self.model(ours=True)
        split = build_split_batches(self.cfg, self.data, train=True, device=self.device)
        batches = our_batches(split, self.device)
        images, targets, tokens, _ = next(batches)
        flops = count_training_flops(model, self.objective, images, targets, tokens, self.precision, self.device)
        results = {"flops_per_image": flops / len(targets),
                   "ours": self._train(model, build_optimizer(self.cfg, model.parameters(), self.device),
                                       self.precision, batches, self.cfg.compile)}

        say("training: paper path (fp32, JPEG DataLoader, plain AdamW) ...")
        use_tf32_flags(self.device, False)
        model = self.model(ours=False)
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.cfg.lr, betas=(0.9, 0.98), eps=1e-9,
                                      weight_decay=self.cfg.weight_decay)
        results["paper"] = self._train(model, optimizer, "fp32", jpeg_batches(self.paper_loader(True), self.device))

        for path in (results["ours"], results["paper"]):
            peak, source = peak_flops(self.device, path["math"], self.args.peak_tflops)
            achieved = results["flops_per_image"] * path["images_per_s"]
            path.update(tflops=achieved / 1e12, peak_tflops=peak and peak / 1e12, peak_source=source,
                        mfu=peak and achieved / peak)
        return results

    def evaluation(self) -> dict:
        test = self.data.test
        say(f"evaluation: ours (batched, {self.args.input}) over {len(test)} images ...")
        use_tf32_flags(self.device, self.cfg.tf32)
        model = self.model(ours=True)
        batches = build_split_batches(self.cfg, self.data, train=False, device=self.device)
        ours, seconds, memory = timed(lambda: evaluation.evaluate_model(
            model, self.objective, batches.batches(self.device), test.caption_tokens, self.device,
            self.precision, self.data.groups), self.device)
        results = {"ours": {"images_per_s": len(test) / seconds, "seconds": seconds, "peak_mib": memory}}

        limit = self.args.paper_eval_images or len(test)
        say(f"evaluation: paper path (per-image loop, JPEG DataLoader) over {limit} images ...")
        use_tf32_flags(self.device, False)
        model = self.model(ours=False)
        batches = itertools.islice(jpeg_batches(self.paper_loader(train=False), self.device, range(1)), limit)
        paper, seconds, memory = timed(
            lambda: evaluate_per_image(model, batches, self.data.groups), self.device)
        results["paper"] = {"images_per_s": limit / seconds, "seconds": seconds * len(test) / limit,
                            "measured_images": limit, "peak_mib": memory}
        results["max_abs_score_difference"] = (ours.scores[:limit] - paper).abs().max().item()
        return results


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="ViT-tiny", help="ViT-tiny, RN-tiny, RN50, ViT-B/16, ...")
    parser.add_argument("--size", type=int, default=None, help="image size (default: the model's own)")
    parser.add_argument("--batch-size", type=int, default=8, help="training batch (the paper's: 8)")
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"], default="auto",
                        help="ours (auto: bf16 on CUDA, fp32 on the CPU); the paper path is fp32")
    parser.add_argument("--tf32", action="store_true",
                        help="ours: TF32 matmuls and convolutions on CUDA (the config option tf32 = True); "
                             "the paper path keeps PyTorch's default flags")
    parser.add_argument("--input", choices=["cache", "loader"], default="cache",
                        help="ours: decoded-image cache, or the tuned JPEG DataLoader")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per path")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed training steps per path (default 3; 10 with --compile, whose "
                             "first steps compile for the first shapes, then for variable caption lengths)")
    parser.add_argument("--compile", action="store_true",
                        help="ours: the model's forward pass and the objective through torch.compile")
    parser.add_argument("--train-images", type=int, default=1142, help="as VOC-MLT's training split")
    parser.add_argument("--test-images", type=int, default=4952, help="as VOC-MLT's test split")
    parser.add_argument("--paper-eval-images", type=int, default=None,
                        help="time the per-image loop on this many test images only (its time is scaled)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="DataLoader workers of the JPEG loaders")
    parser.add_argument("--ours-workers", type=int, default=None,
                        help="num_workers of ours (default: 0 with the cache, a memmap read costs less "
                             "than a hand-over from a worker process; --workers with --input loader)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default on the CPU: the cores the JPEG workers leave "
                             "free, at least 1; OpenMP threads that share cores with them stall)")
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "tailclip-bench")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, if not known")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.ours_workers is None:
        args.ours_workers = 0 if args.input == "cache" else args.workers
    if args.warmup is None:
        args.warmup = 10 if args.compile else 3
    if args.threads is None and args.device == "cpu":
        args.threads = max(1, (os.cpu_count() or 1) - args.workers)
    return args


def environment(args) -> dict:
    device = torch.device(args.device)
    name = platform.processor() or "cpu"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    elif Path("/proc/cpuinfo").exists():
        models = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")]
        name = models[0] if models else name
    return {"device": name, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "command": " ".join(["python", "bench/bench_train.py", *sys.argv[1:]])}


def report(args, cfg: Config, env: dict, results: dict) -> str:
    inputs, train, evaluation = results["input"], results["train"], results["eval"]
    ratios = results["ratios"]

    def mfu(path):
        return "n/a" if path["mfu"] is None else f"{100 * path['mfu']:.1f}%"

    paper_eval = "paper per-image" + ("" if args.paper_eval_images is None else f" ({args.paper_eval_images})")
    rows = [("input pipeline", f"ours ({args.input})", inputs["ours"], "", "", ""),
            ("input pipeline", "paper JPEG DataLoader", inputs["paper"], "", "", "")]
    rows += [("training", name, train[key]["images_per_s"], f"{train[key]['peak_mib']:.0f}",
              f"{train[key]['tflops']:.3f}", mfu(train[key]))
             for key, name in (("ours", f"ours {train['ours']['math']} {args.input}"
                                        + (" compiled" if args.compile else "")),
                               ("paper", f"paper {train['paper']['math']} JPEG"))]
    rows += [("evaluation", name, evaluation[key]["images_per_s"], f"{evaluation[key]['peak_mib']:.0f}", "", "")
             for key, name in (("ours", f"ours batched {args.eval_batch_size}"), ("paper", paper_eval))]
    lines = [f"{args.model} at {cfg.size} px, batch {cfg.batch_size}, {env['device']} "
             f"({env['torch_threads']} torch threads; DataLoader workers: paper {args.workers}, "
             f"ours {args.ours_workers}), torch {env['torch']}",
             f"{'phase':<15} {'path':<26} {'images/s':>10} {'peak MiB':>9} {'TFLOP/s':>8} {'MFU':>6}"]
    lines += [f"{a:<15} {b:<26} {c:>10.1f} {d:>9} {e:>8} {f:>6}" for a, b, c, d, e, f in rows]
    lines += ["",
              f"ours / paper: input pipeline {ratios['input']:.1f}x, training {ratios['train']:.2f}x, "
              f"evaluation {ratios['eval']:.2f}x",
              f"evaluation of {args.test_images} test images: ours {evaluation['ours']['seconds']:.1f} s, paper "
              f"{evaluation['paper']['seconds']:.1f} s{'' if args.paper_eval_images is None else ' (scaled)'}; "
              f"max |score difference| {evaluation['max_abs_score_difference']:.1e}",
              f"ours: both splits' batches set up in {inputs['ours_setup_seconds']:.1f} s"
              + (" (the decoded-image cache: built on the first run, opened afterwards)"
                 if args.input == "cache" else ""),
              f"training FLOPs per image (forward + backward): {train['flops_per_image'] / 1e9:.3f} GFLOP; "
              f"peak FLOP/s: {train['ours']['peak_source']}",
              f"total {results['total_seconds']:.0f} s"]
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    env = environment(args)
    bench = Bench.build(args)
    results = {"input": bench.input_pipeline(), "train": bench.training(), "eval": bench.evaluation()}
    results["ratios"] = {"input": results["input"]["ours"] / results["input"]["paper"],
                         **{key: results[key]["ours"]["images_per_s"] / results[key]["paper"]["images_per_s"]
                            for key in ("train", "eval")}}
    results["total_seconds"] = time.perf_counter() - start
    print(report(args, bench.cfg, env, results))
    if args.json:
        arguments = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        args.json.write_text(json.dumps({"args": arguments, "environment": env, "results": results}, indent=2))


if __name__ == "__main__":
    main()
