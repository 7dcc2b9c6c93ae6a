"""TailCLIP: long-tailed multi-label image classification by fine-tuning CLIP with balanced
representation learning (CLIP contrastive loss + balanced asymmetric loss, balanced sampling)."""

from pathlib import Path

# The checkout: relative data paths of a config and the shipped files are found from it.
REPO_ROOT = Path(__file__).resolve().parents[1]
