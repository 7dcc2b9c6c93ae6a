"""Check open_clip backbones offline and print docs/backbones.md's table.

For each (model, pretrained tag): the tag's entry exists in open_clip's registry, and the
architecture builds through `tailclip.open_clip_backbone` (on the meta device: no memory, no
download), by our clip package or as open_clip's own model. Prints parameters, resolution,
context length and the memory that full fine-tuning with AdamW needs before any activation:
float32 weights, gradients and two moments, 16 bytes per parameter.

    python bench/open_clip_backbones.py
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import open_clip  # noqa: E402

from tailclip.open_clip_backbone import OpenCLIPBackbone, build_open_clip_backbone, native_size, pretrained_entry  # noqa: E402

BACKBONES = [
    ("ViT-H-14-378", "dfn5b"),
    ("ViT-H-14-quickgelu", "dfn5b"),
    ("ViT-L-14-quickgelu", "dfn2b"),
    ("ViT-L-14-336-quickgelu", "openai"),
    ("ViT-bigG-14", "laion2b_s39b_b160k"),
    ("ViT-SO400M-14-SigLIP-384", "webli"),
    ("ViT-SO400M-16-SigLIP2-384", "webli"),
    ("EVA02-L-14-336", "merged2b_s6b_b61k"),
    ("coca_ViT-L-14", "laion2b_s13b_b90k"),
]
ADAMW_BYTES_PER_PARAMETER = 16


def row(name: str, tag: str) -> str:
    model_name = f"open_clip:{name}"
    assert pretrained_entry(model_name, tag), f"{name}: no pretrained tag {tag!r} in open_clip's registry"
    with torch.device("meta"):
        backbone = build_open_clip_backbone(model_name, False)
    parameters = sum(p.numel() for p in backbone.parameters())
    resolution, context = native_size(model_name)
    built_by = "open_clip's model" if isinstance(backbone, OpenCLIPBackbone) else "our clip package"
    static_gb = parameters * ADAMW_BYTES_PER_PARAMETER / 1e9
    return (f"| `{model_name}` | {parameters / 1e6:.0f} M | {resolution} | {context} | `{tag}` | "
            f"{built_by} | {static_gb:.1f} GB + activations |")


def main(argv=None) -> None:
    summary, details = __doc__.split("\n\n", 1)
    argparse.ArgumentParser(description=summary, epilog=details,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    print(f"open_clip {open_clip.__version__}, torch {torch.__version__}")
    print("| model_name | parameters | size | max_length | pretrained tag checked | built by | memory at batch 8 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, tag in BACKBONES:
        print(row(name, tag), flush=True)


if __name__ == "__main__":
    main()
