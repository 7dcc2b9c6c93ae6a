"""Memory of one training step with and without gradient checkpointing, and the largest
batch of larger backbones that fits a GPU.

1. Measured: one TailCLIP training step (random weights, VOC's 20 class prompts with
   gradient, one caption per image, AdamW) of `--model` at `--batch-size` and at half of it,
   with and without `grad_checkpointing`, each in a fresh process. A warm-up step first
   allocates the gradients and AdamW's states; the measured step then gives
   - `activations`: the peak during forward + backward over the memory before it (weights,
     gradients, optimizer states): what checkpointing cuts;
   - `step_peak`: the process's peak during the step, everything included;
   - per image: the activation difference between the two batch sizes, over their difference.
   On the CPU memory is the resident set (VmRSS, its peak VmHWM reset through
   /proc/self/clear_refs), with glibc told to return every freed block over 64 KiB to the
   system (MALLOC_MMAP_THRESHOLD_), so that freed activations do not stay resident; on CUDA
   it is torch's allocator (`memory_allocated`, `max_memory_allocated`).
2. Estimated: the largest batch of ViT-L/14@336, ViT-H/14-378 and ViT-bigG/14 that fits 24,
   48 and 80 GB in bf16 autocast, from activations per image counted block by block (the
   tensors autograd saves for one residual block at the model's width and sequence length,
   under CPU bf16 autocast), calibrated by the measured/counted ratio of `--model`.

    python bench/bench_memory.py                  # ViT-B/16, batches 8 and 4, CPU
    python bench/bench_memory.py --device cuda --json memory.json
"""
import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import clip  # noqa: E402
from clip.model import ResidualAttentionBlock  # noqa: E402
from tailclip import factory  # noqa: E402
from tailclip.config import Config  # noqa: E402
from tailclip.engine.optim import build_optimizer  # noqa: E402
from tailclip.engine.precision import autocast, resolve_precision  # noqa: E402

VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor"]
MiB = 2 ** 20
GB = 10 ** 9

# open_clip's model configs (model_configs/*.json) of the estimated backbones, with the
# activation of the weights they are published with: OpenAI's ViT-L/14@336 and DFN-5B's
# ViT-H/14-378 use QuickGELU, LAION-2B's ViT-bigG/14 GELU.
TARGETS = {
    "ViT-L/14@336": {"embed_dim": 768, "quick_gelu": True,
                     "vision_cfg": {"image_size": 336, "layers": 24, "width": 1024, "patch_size": 14},
                     "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 768, "heads": 12,
                                  "layers": 12}},
    "ViT-H/14-378": {"embed_dim": 1024, "quick_gelu": True,
                     "vision_cfg": {"image_size": 378, "layers": 32, "width": 1280, "head_width": 80,
                                    "patch_size": 14},
                     "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16,
                                  "layers": 24}},
    "ViT-bigG/14": {"embed_dim": 1280,
                    "vision_cfg": {"image_size": 224, "layers": 48, "width": 1664, "head_width": 104,
                                   "mlp_ratio": 4.9231, "patch_size": 14},
                    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1280, "heads": 20,
                                 "layers": 32}},
}
GPU_SIZES_GB = (24, 48, 80)
# Taken from each GPU's memory before the model: CUDA context, cuBLAS/cuDNN workspaces,
# allocator fragmentation.
RESERVED_GB = 2.0
# fp32 master weights, fp32 gradients, AdamW's two fp32 moments (the repository's bf16 mode
# is autocast over float32 parameters).
BYTES_PER_PARAMETER = 4 + 4 + 8
CAPTION_TOKENS = 77  # per image, the whole context: an upper bound (captions are trimmed)
PROMPT_TOKENS = 8  # per class prompt, "<start> a photo of a <name> . <end>"
PROMPT_CLASSES = 80  # COCO-MLT's class prompts, encoded with gradient every step


# ---------------------------------------------------------------- measured (child process)

def _cpu_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def memory(device: torch.device, peak: bool = False) -> int:
    """Bytes in use now, or at most since `reset_peak` with `peak`."""
    if device.type == "cuda":
        return (torch.cuda.max_memory_allocated if peak else torch.cuda.memory_allocated)(device)
    return _cpu_kib("VmHWM" if peak else "VmRSS") * 1024


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_step(model_name: str, batch_size: int, grad_checkpointing: bool, device: torch.device) -> dict:
    """Memory (bytes) and time of one training step after a warm-up step (see the module doc)."""
    size = clip.model_resolution(model_name)
    cfg = Config(model_name=model_name, pretrained=False, size=size, batch_size=batch_size,
                 grad_checkpointing=grad_checkpointing)
    torch.manual_seed(0)
    model = factory.build_model(cfg, [cfg.class_caption + name for name in VOC_CLASSES]).to(device).train()
    objective = factory.build_objective(cfg, model).to(device)
    optimizer = build_optimizer(cfg, model.parameters(), device)
    precision = resolve_precision(cfg.precision, device)

    generator = torch.Generator().manual_seed(1)
    images = torch.randn(batch_size, 3, size, size, generator=generator).to(device)
    targets = (torch.rand(batch_size, len(VOC_CLASSES), generator=generator) < 0.1).float().to(device)
    captions = [f"a photo of a {VOC_CLASSES[i % 20]} and a {VOC_CLASSES[(3 * i + 1) % 20]}"
                for i in range(batch_size)]
    tokens = clip.trim_padding(clip.tokenize(captions)).to(device)

    def forward_backward() -> None:
        with autocast(precision, device):
            loss = objective(**model(images, tokens), targets=targets)["loss"]
        loss.backward()

    forward_backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=False)  # gradients stay allocated: the baseline holds them
    synchronize(device)
    before = memory(device)
    reset_peak(device)
    started = time.perf_counter()
    forward_backward()
    synchronize(device)
    seconds = time.perf_counter() - started
    activations = memory(device, peak=True) - before
    optimizer.step()
    synchronize(device)
    return {"model": model_name, "batch_size": batch_size, "grad_checkpointing": grad_checkpointing,
            "precision": precision, "parameters": sum(p.numel() for p in model.parameters()),
            "memory_before_step": before, "activations": activations, "step_peak": memory(device, peak=True),
            "forward_backward_s": seconds}


def run_child(args, batch_size: int, grad_checkpointing: bool) -> dict:
    """`measure_step` in a fresh process, so that no run inherits another's memory."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}
    command = [sys.executable, __file__, "--child", "--model", args.model, "--device", args.device,
               "--batch-size", str(batch_size), "--threads", str(args.threads)]
    if grad_checkpointing:
        command.append("--grad-checkpointing")
    output = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(output.splitlines()[-1])


# ---------------------------------------------------------------- counted (this process)

def _saved_bytes(block: ResidualAttentionBlock, batch: int, tokens: int, dtype: torch.dtype) -> int:
    torch.manual_seed(0)
    x = torch.randn(batch, tokens, block.ln_1.normalized_shape[0], dtype=dtype, requires_grad=True)
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    precision = "bf16" if dtype == torch.bfloat16 else "fp32"
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), \
            autocast(precision, torch.device("cpu")):
        block(x)
    return sum(storages.values())


def saved_bytes(width: int, heads: int, tokens: int, mlp_ratio: float, quick_gelu: bool, causal: bool,
                dtype: torch.dtype) -> int:
    """Bytes autograd keeps for the backward pass of one residual block per sequence of
    `tokens`, its input in `dtype` (bf16: under CPU autocast, as the GPU runs it). The
    difference between two sequences and one: weights (and their bf16 copies) cancel out."""
    block = ResidualAttentionBlock(width, heads, causal, mlp_ratio, quick_gelu)
    return _saved_bytes(block, 2, tokens, dtype) - _saved_bytes(block, 1, tokens, dtype)


def counted_activations(cfg: dict, dtype: torch.dtype, caption_tokens: int) -> dict:
    """Counted activation bytes of `cfg` (open_clip config, ViT): per image (image + one
    caption), without and with checkpointing, and the per-step class-prompt part."""
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    quick_gelu = cfg.get("quick_gelu", False)
    image_tokens = (vision["image_size"] // vision["patch_size"]) ** 2 + 1
    vision_heads = vision["width"] // vision.get("head_width", 64)
    vision_block = saved_bytes(vision["width"], vision_heads, image_tokens, vision.get("mlp_ratio", 4.0),
                               quick_gelu, False, dtype)
    caption_block = saved_bytes(text["width"], text["heads"], caption_tokens, 4.0, quick_gelu, True, dtype)
    prompt_block = saved_bytes(text["width"], text["heads"], PROMPT_TOKENS, 4.0, quick_gelu, True, dtype)
    element = torch.finfo(dtype).bits // 8
    block_inputs = (vision["layers"] * image_tokens * vision["width"]
                    + text["layers"] * caption_tokens * text["width"]) * element
    return {
        "per_image": vision["layers"] * vision_block + text["layers"] * caption_block,
        # Checkpointed: each block's input, plus one block's activations rebuilt at a time.
        "per_image_checkpointed": block_inputs + max(vision_block, caption_block),
        "class_prompts": PROMPT_CLASSES * text["layers"] * prompt_block,
    }


def parameter_count(cfg: dict) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in clip.build_from_open_clip_config(cfg).parameters())


def largest_batch(budget: float, per_image: float) -> int:
    return max(int(budget // per_image), 0)


def estimates(calibration: float) -> list[dict]:
    rows = []
    for name, cfg in TARGETS.items():
        counted = counted_activations(cfg, torch.bfloat16, CAPTION_TOKENS)
        parameters = parameter_count(cfg)
        fixed = parameters * BYTES_PER_PARAMETER + calibration * counted["class_prompts"]
        row = {"model": name, "parameters": parameters, "fixed_gb": fixed / GB,
               "per_image_mb": calibration * counted["per_image"] / 1e6,
               "per_image_checkpointed_mb": calibration * counted["per_image_checkpointed"] / 1e6}
        for size in GPU_SIZES_GB:
            budget = (size - RESERVED_GB) * GB - fixed
            row[f"{size}GB"] = largest_batch(budget, calibration * counted["per_image"])
            row[f"{size}GB_checkpointed"] = largest_batch(budget, calibration * counted["per_image_checkpointed"])
        rows.append(row)
    return rows


def measured_per_image(results: dict, grad_checkpointing: bool, small: int, large: int) -> float:
    return ((results[(large, grad_checkpointing)]["activations"] - results[(small, grad_checkpointing)]["activations"])
            / (large - small))


def open_clip_config(model_name: str) -> dict:
    """Our architecture table's `model_name` as an open_clip config dict (for counting)."""
    arch = clip.architectures.ARCHITECTURES[model_name]
    return {"embed_dim": arch.embed_dim, "quick_gelu": True,
            "vision_cfg": {"image_size": arch.image_resolution, "layers": arch.vision_layers,
                           "width": arch.vision_width, "patch_size": arch.vision_patch_size},
            "text_cfg": {"width": arch.transformer_width, "heads": arch.transformer_heads,
                         "layers": arch.transformer_layers}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B/16", help="a ViT of clip.architectures (default ViT-B/16)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--json", help="write every figure to this file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--grad-checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.child:
        print(json.dumps(measure_step(args.model, args.batch_size, args.grad_checkpointing, device)))
        return

    small, large = args.batch_size // 2, args.batch_size
    results = {(batch, ckpt): run_child(args, batch, ckpt) for batch in (small, large) for ckpt in (False, True)}
    plain, checkpointed = results[(large, False)], results[(large, True)]
    print(f"{args.model}, batch {large}, {plain['precision']} on {args.device} "
          f"({plain['parameters'] / 1e6:.1f} M parameters)")
    print("| grad_checkpointing | memory before the step MiB | activations MiB | step peak MiB | forward+backward s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for result in (plain, checkpointed):
        print(f"| {result['grad_checkpointing']} | {result['memory_before_step'] / MiB:,.0f} | "
              f"{result['activations'] / MiB:,.0f} | {result['step_peak'] / MiB:,.0f} | "
              f"{result['forward_backward_s']:.1f} |")
    cut = 1 - checkpointed["activations"] / plain["activations"]
    print(f"step peak difference: {(plain['step_peak'] - checkpointed['step_peak']) / MiB:,.0f} MiB; "
          f"activations cut by {cut:.0%} (target >= 50%: {'met' if cut >= 0.5 else 'NOT met'}); "
          f"forward+backward time x{checkpointed['forward_backward_s'] / plain['forward_backward_s']:.2f}")

    per_image = {ckpt: measured_per_image(results, ckpt, small, large) for ckpt in (False, True)}
    caption_tokens = clip.trim_padding(clip.tokenize(
        [f"a photo of a {VOC_CLASSES[i % 20]} and a {VOC_CLASSES[(3 * i + 1) % 20]}" for i in range(large)])).shape[1]
    dtype = torch.float32 if plain["precision"] == "fp32" else torch.bfloat16
    counted = counted_activations(open_clip_config(args.model), dtype, caption_tokens)
    calibration = per_image[False] / counted["per_image"]
    print(f"per image, measured (batch {small} -> {large}): {per_image[False] / MiB:,.1f} MiB, "
          f"checkpointed {per_image[True] / MiB:,.1f} MiB; counted: {counted['per_image'] / MiB:,.1f} MiB, "
          f"checkpointed {counted['per_image_checkpointed'] / MiB:,.1f} MiB; calibration x{calibration:.2f}")

    rows = estimates(calibration)
    print(f"\nLargest batch in bf16 autocast (fp32 weights + gradients + AdamW = {BYTES_PER_PARAMETER} B/parameter, "
          f"{RESERVED_GB:g} GB reserved, {CAPTION_TOKENS}-token captions, {PROMPT_CLASSES} class prompts); "
          "without / with grad_checkpointing:")
    print("| model | parameters | weights+grads+AdamW GB | activations/image MB | checkpointed MB/image | "
          + " | ".join(f"{size} GB" for size in GPU_SIZES_GB) + " |")
    print("| --- | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in GPU_SIZES_GB) + " |")
    for row in rows:
        print(f"| {row['model']} | {row['parameters'] / 1e6:,.0f} M | {row['fixed_gb']:.1f} | "
              f"{row['per_image_mb']:,.0f} | {row['per_image_checkpointed_mb']:,.0f} | "
              + " | ".join(f"{row[f'{size}GB']} / {row[f'{size}GB_checkpointed']}" for size in GPU_SIZES_GB) + " |")

    if args.json:
        Path(args.json).write_text(json.dumps({
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
            "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
            "measured": list(results.values()), "per_image_measured": {str(k): v for k, v in per_image.items()},
            "counted": counted, "calibration": calibration, "estimates": rows}, indent=2))


if __name__ == "__main__":
    main()
