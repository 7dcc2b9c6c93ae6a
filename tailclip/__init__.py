"""TailCLIP: long-tailed multi-label image classification by fine-tuning CLIP with balanced
representation learning (CLIP contrastive loss + balanced asymmetric loss, balanced sampling)."""
