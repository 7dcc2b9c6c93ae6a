"""TailCLIP on VOC-MLT with the strongest standard CLIP in open_clip's registry: Apple's DFN5B
ViT-H/14 at 378 pixels. Every other setting is the published ViT-B/16 recipe
(configs/voc_mlt_vitb16.py, inherited below).

Train: python train.py --config=configs/voc_mlt_vith14_378_dfn5b.py
Test:  python test.py --config=configs/voc_mlt_vith14_378_dfn5b.py --zeroshot=True
       python test.py --config=configs/voc_mlt_vith14_378_dfn5b.py --checkpoint=best_valid_mAP.pt
Needs open_clip (pip install open_clip_torch); the weights (3.9 GB) download on first use
into ~/.cache/clip/open_clip/ (or $TAILCLIP_CACHE).

Why this backbone:
- Zero-shot quality: about 84% ImageNet top-1 zero-shot (published with the weights, Fang et
  al. 2023, "Data Filtering Networks"; not measured here), against 68.3% for the paper's
  OpenAI ViT-B/16 (open_clip's results table). The models published as somewhat higher on
  ImageNet (SigLIP 2 ViT-gopt, 1.9 B parameters; PE-Core bigG, 2.4 B) are twice its size, and
  no zero-shot mAP on VOC-MLT is known for any of them.
- It is a standard CLIP (ViT image tower, OpenAI's text transformer, QuickGELU), so our clip
  package builds it: prompt learning, positional-embedding interpolation and padding
  trimming work, and its pretraining objective is the softmax contrastive loss of the recipe.
- Memory: 987 M parameters, so full fine-tuning with AdamW holds 16 GB of float32 weights,
  gradients and moments before any activation. Estimate for batch 8 in bf16 from
  BENCHMARKS.md's per-image activations (1,413 MB, 106 MB checkpointed) and its 2 GB
  reserve, not yet measured on a GPU: about 30 GB without gradient checkpointing, about
  19 GB with it, so one 24 GB GPU trains it only with checkpointing (40-80 GB either way).
"""
import runpy
from pathlib import Path

PublishedRecipe = runpy.run_path(str(Path(__file__).with_name("voc_mlt_vitb16.py")))["CFG"]


class DFN5BViTH14:
    """The backbone options, shared with configs/coco_mlt_vith14_378_dfn5b.py."""
    # open_clip model name after "open_clip:"; pretrained is one of its open_clip tags
    model_name = "open_clip:ViT-H-14-378"
    pretrained = "dfn5b"
    # The model's own resolution and context length (both checked against its config)
    size = 378
    max_length = 77
    # Recompute each residual block in the backward pass: at batch 8 the activations of the
    # 32 image and 24 text blocks shrink from about 11 GB to about 1 GB (estimates above)
    grad_checkpointing = True


class CFG(DFN5BViTH14, PublishedRecipe):
    pass
