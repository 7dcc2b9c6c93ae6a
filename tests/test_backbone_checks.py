"""The choices that depend on the backbone (its weights, input size, ViT-only options, prompt
modes) are checked once, with the config, for OpenAI's and open_clip's names alike: a wrong
one fails at start-up, before any model is built."""
import re

import pytest

from tailclip.config import Config, ConfigError


@pytest.mark.parametrize("options, message", [
    ({"model_name": "ViT-tiny", "size": 64},
     "pretrained: model_name = 'ViT-tiny' has no pretrained OpenAI weights (those are: RN50,"),
    ({"model_name": "open_clip:ViT-B-16"}, "pretrained: True means OpenAI's weights, which 'open_clip:ViT-B-16'"),
    ({"model_name": "open_clip:ViT-B-16", "pretrained": False, "size": 64},
     "size: open_clip:ViT-B-16 takes 224-pixel images, not 64; set size = 224, or interpolate_pos_embedding = True"),
    ({"model_name": "open_clip:RN50", "pretrained": False, "finetune": "prompt+visual"},
     "finetune: 'prompt+visual' needs a Vision Transformer; open_clip:RN50 is a ResNet"),
    ({"model_name": "open_clip:ViT-B-16-SigLIP-256", "pretrained": False, "size": 256, "finetune": "prompt"},
     "finetune: 'prompt' needs a backbone of our clip package"),
    ({"model_name": "open_clip:ViT-B-16-SigLIP-256", "pretrained": False, "size": 224,
      "interpolate_pos_embedding": True},
     "size: open_clip:ViT-B-16-SigLIP-256 takes 256-pixel images, not 224, and interpolate_pos_embedding works on "
     "our clip package's Vision Transformers only"),
])
def test_a_choice_the_backbone_cannot_take_fails_with_the_config(options, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        Config(**options)


def test_choices_the_backbone_takes_pass():
    assert Config(model_name="open_clip:ViT-B-16", pretrained=False, size=32, interpolate_pos_embedding=True).size == 32
    assert Config(model_name="open_clip:ViT-B-16-SigLIP-256", pretrained=False, size=256).finetune == "full"
    assert Config(model_name="RN50", size=224).pretrained is True
