"""The numerics a config runs in: precision and TF32 (tailclip/engine/precision.py), and the
published configs' defaults, which must be the paper's (float32, PyTorch's own TF32 flags)."""
import pytest
import torch

from tailclip.config import load_config
from tailclip.engine.precision import resolve_precision, set_tf32, tf32_changes, tf32_flags

CUDA, CPU = torch.device("cuda"), torch.device("cpu")
PUBLISHED = ("voc_mlt_rn50", "voc_mlt_vitb16", "coco_mlt_rn50", "coco_mlt_vitb16")


def raw_tf32_state() -> dict:
    """Every TF32 setting torch has, read from torch itself (not through tailclip)."""
    backends = torch.backends
    if not hasattr(backends.cuda.matmul, "fp32_precision"):
        return {"matmul": backends.cuda.matmul.allow_tf32, "cudnn": backends.cudnn.allow_tf32}
    return {"generic": backends.fp32_precision, "matmul": backends.cuda.matmul.fp32_precision,
            "cudnn": backends.cudnn.fp32_precision, "conv": backends.cudnn.conv.fp32_precision,
            "rnn": backends.cudnn.rnn.fp32_precision, "mkldnn": backends.mkldnn.fp32_precision}


@pytest.fixture
def restore_tf32():
    """Put torch's TF32 flags back after a test that changes them (the flags are settable,
    and read back, without a GPU)."""
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    saved = matmul.allow_tf32, matmul.fp32_precision, conv.fp32_precision
    yield
    matmul.allow_tf32, matmul.fp32_precision, conv.fp32_precision = saved


@pytest.mark.parametrize("stem", PUBLISHED)
def test_published_configs_train_and_evaluate_in_float32_with_default_tf32_flags(repo_root, stem, restore_tf32):
    cfg = load_config(repo_root / "configs" / f"{stem}.py")
    assert resolve_precision(cfg.precision, CUDA) == "fp32"
    assert tf32_changes(cfg.tf32, CUDA) == {}
    before = raw_tf32_state()
    set_tf32(cfg.tf32, CUDA)  # what train.py and test.py do once the device is known
    assert raw_tf32_state() == before


@pytest.mark.parametrize("stem", PUBLISHED)
def test_fast_mode_of_the_config_comments_is_bf16_with_tf32(repo_root, stem, restore_tf32):
    path = repo_root / "configs" / f"{stem}.py"
    assert "--set precision=bf16 --set tf32=True" in path.read_text()
    cfg = load_config(path, ["precision=bf16", "tf32=True"])
    assert resolve_precision(cfg.precision, CUDA) == "bf16"
    set_tf32(cfg.tf32, CUDA)
    assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == ("tf32", "tf32")
    assert tf32_flags() == {"matmul": "tf32", "conv": "tf32"}
    # The older matmul flag agrees and reads without error (torch code that still reads it).
    assert torch.backends.cuda.matmul.allow_tf32 is True
    assert torch.get_float32_matmul_precision() == "high"


def test_tf32_is_never_set_off_cuda(restore_tf32):
    before = raw_tf32_state()
    set_tf32(True, CPU)
    assert tf32_changes(True, CPU) == {} and raw_tf32_state() == before


def test_library_default_leaves_tf32_alone_and_precision_auto(tmp_path, restore_tf32):
    path = tmp_path / "bare.py"
    path.write_text("class CFG:\n    epochs = 1\n")
    cfg = load_config(path)
    assert (cfg.precision, cfg.tf32) == ("auto", False)
    assert resolve_precision(cfg.precision, CUDA) == "bf16" and tf32_changes(cfg.tf32, CUDA) == {}
