"""Dimensions of every CLIP architecture we can build, and where OpenAI publishes the weights.

The numbers are OpenAI's (they are what `build_model` infers from the released checkpoints).
Attention heads are always `width // 64` in OpenAI's models, and `build_model` relies on
that rule, so the table keeps to it (tests check this).
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Architecture:
    """Keyword arguments of `clip.model.CLIP`."""

    embed_dim: int
    image_resolution: int
    vision_layers: int | tuple[int, int, int, int]  # int: ViT depth; tuple: ResNet stage depths
    vision_width: int
    vision_patch_size: int | None  # None for the modified ResNets
    context_length: int
    vocab_size: int
    transformer_width: int
    transformer_heads: int
    transformer_layers: int

    @property
    def is_vit(self) -> bool:
        return self.vision_patch_size is not None


A = Architecture
ARCHITECTURES: dict[str, Architecture] = {
    #               embed  res   vision layers   width  patch  ctx  vocab  width heads layers
    "RN50":           A(1024, 224, (3, 4, 6, 3),    64, None,  77, 49408,  512,  8, 12),
    "RN101":          A(512,  224, (3, 4, 23, 3),   64, None,  77, 49408,  512,  8, 12),
    "RN50x4":         A(640,  288, (4, 6, 10, 6),   80, None,  77, 49408,  640, 10, 12),
    "RN50x16":        A(768,  384, (6, 8, 18, 8),   96, None,  77, 49408,  768, 12, 12),
    "RN50x64":        A(1024, 448, (3, 15, 36, 10), 128, None, 77, 49408, 1024, 16, 12),
    "ViT-B/32":       A(512,  224, 12,  768,  32,  77, 49408,  512,  8, 12),
    "ViT-B/16":       A(512,  224, 12,  768,  16,  77, 49408,  512,  8, 12),
    "ViT-L/14":       A(768,  224, 24, 1024,  14,  77, 49408,  768, 12, 12),
    "ViT-L/14@336px": A(768,  336, 24, 1024,  14,  77, 49408,  768, 12, 12),
    # Tiny random-init models for tests and the demo: real vocabulary and context length,
    # 64-pixel input. RN-tiny's width 16 gives an 8-head, 512-wide attention pool.
    "RN-tiny":        A(64,    64, (1, 1, 1, 1),    16, None,  77, 49408,   64,  1,  2),
    "ViT-tiny":       A(64,    64, 2,    64,  16,  77, 49408,   64,  1,  2),
}
del A

# OpenAI's TorchScript checkpoints; the path segment before the file name is its sha256.
_MODELS_URL = "https://openaipublic.azureedge.net/clip/models"
CHECKPOINT_URLS: dict[str, str] = {
    "RN50": f"{_MODELS_URL}/afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt",
    "RN101": f"{_MODELS_URL}/8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599/RN101.pt",
    "RN50x4": f"{_MODELS_URL}/7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd/RN50x4.pt",
    "RN50x16": f"{_MODELS_URL}/52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa/RN50x16.pt",
    "RN50x64": f"{_MODELS_URL}/be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c/RN50x64.pt",
    "ViT-B/32": f"{_MODELS_URL}/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
    "ViT-B/16": f"{_MODELS_URL}/5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
    "ViT-L/14": f"{_MODELS_URL}/b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
    "ViT-L/14@336px":
        f"{_MODELS_URL}/3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt",
}


def vit_names() -> list[str]:
    """Names of the Vision Transformer architectures (the ones that take visual prompts)."""
    return [name for name, arch in ARCHITECTURES.items() if arch.is_vit]
