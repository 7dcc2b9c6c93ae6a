"""Config files, overrides and flags: tailclip/config.py."""
import ast
import dataclasses
import json
import re

import pytest

from tailclip.config import Config, ConfigError, load_config, parse_bool, parse_override

# The published settings (from the paper's configs), written out independently of
# the config files they check.
COMMON = dict(
    class_caption="a photo of a ", use_dataset_train_captions=False, size=224, max_length=77,
    batch_size=8, num_workers=4, epochs=50, loss_function=["clip", "bal"], asl_gamma_pos=0.0,
    asl_clip=0.05, asl_eps=1e-8, use_sample_weights=True, use_weighted_loss=True,
    optimizer="AdamW", weight_decay=0.01, save_best_mAP_checkpoint=True,
    save_best_tail_mAP_checkpoint=True, save_newest_checkpoint=True, pretrained=True,
)
PUBLISHED = {
    # config: (dataset, model_name, lr, asl_mul, asl_gamma_neg, weights power, label_smoothing)
    "voc_mlt_rn50": ("voc_mlt", "RN50", 2e-6, 0.2, 12, 0.7, 0.01),
    "voc_mlt_vitb16": ("voc_mlt", "ViT-B/16", 1e-6, 0.4, 9.8, 1.35, 0.1),
    "coco_mlt_rn50": ("coco_mlt", "RN50", 1e-7, 6, 9.8, 1.35, 0.1),
    "coco_mlt_vitb16": ("coco_mlt", "ViT-B/16", 1e-6, 5, 9.8, 1.6, 0.1),
}


def write_config(tmp_path, body, name="cfg.py"):
    path = tmp_path / name
    path.write_text(body)
    return path


@pytest.mark.parametrize("stem", sorted(PUBLISHED))
def test_published_configs_carry_the_paper_values(repo_root, stem):
    dataset, model_name, lr, asl_mul, gamma_neg, power, smoothing = PUBLISHED[stem]
    expected = dict(COMMON, dataset=dataset, model_name=model_name, lr=lr, asl_mul=asl_mul,
                    asl_gamma_neg=gamma_neg, sample_weights_power=power,
                    class_weights_power=power, label_smoothing=smoothing)
    cfg = load_config(repo_root / "configs" / f"{stem}.py")
    assert {key: getattr(cfg, key) for key in expected} == expected
    assert isinstance(cfg.asl_gamma_neg, float) and isinstance(cfg.asl_mul, float)


def test_published_configs_document_every_option(repo_root):
    """Every option, or group of consecutive options, has a comment line above it."""
    for stem in PUBLISHED:
        lines = (repo_root / "configs" / f"{stem}.py").read_text().splitlines()
        for number, line in enumerate(lines):
            if re.match(r"    \w+ = ", line):
                above = number - 1
                while re.match(r"    \w+ = ", lines[above]):
                    above -= 1
                assert lines[above].strip().startswith("#"), f"configs/{stem}.py:{number + 1}: no comment"


def test_demo_config_is_a_small_cpu_run(repo_root):
    cfg = load_config(repo_root / "configs" / "demo.py")
    assert (cfg.dataset, cfg.model_name, cfg.pretrained, cfg.size) == ("synthetic_mlt", "ViT-tiny", False, 32)
    assert cfg.interpolate_pos_embedding  # 32-pixel images on the 64-pixel ViT-tiny
    assert (cfg.device, cfg.precision) == ("cpu", "fp32")
    assert cfg.epochs <= 10 and 1e-4 <= cfg.lr <= 1e-3
    assert cfg.loss_function == ["clip", "bal"] and cfg.label_smoothing == 0.1


def test_defaults_are_those_of_the_options_table(repo_root):
    """docs/options.md's table is the contract: same names, same defaults."""
    table = (repo_root / "docs" / "options.md").read_text()
    documented = {}
    for row in re.findall(r"^\| (`.*?) \| (.*?) \|", table, flags=re.M):
        names = re.findall(r"`([^`]+)`", row[0])
        defaults = [ast.literal_eval(value) for value in re.findall(r"`([^`]+)`", row[1])]
        documented.update(zip(names, defaults if len(defaults) == len(names) else defaults * len(names)))
    assert documented == Config().to_dict()


def test_unknown_option_names_the_file_and_suggests_the_closest(tmp_path):
    path = write_config(tmp_path, "class CFG:\n    lr = 1e-5\n    save_best_map_checkpoint = True\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: save_best_map_checkpoint: unknown option; "
                                                    "did you mean 'save_best_mAP_checkpoint'?")):
        load_config(path)


@pytest.mark.parametrize("line, message", [
    ("batch_size = True", "batch_size: must be an int, got bool True"),
    ("epochs = 2.0", "epochs: must be an int, got float 2.0"),
    ("lr = '1e-5'", "lr: must be a number, got str '1e-5'"),
    ("pretrained = 1", "pretrained: must be True, False or a string, got int 1"),
    ("model_name = None", "model_name: must be a string, got NoneType None"),
    ("loss_function = 'clip'", "loss_function: must be a list of strings"),
    ("dataset = 'voc'", "dataset: must be one of 'voc_mlt', 'coco_mlt', 'synthetic_mlt', 'custom', got 'voc'"),
    ("optimizer = 'adamw'", "optimizer: must be one of 'AdamW', 'Adam', 'SGD'"),
    ("score = 'max'", "score: must be one of"),
    ("precision = 'fp64'", "precision: must be one of"),
    ("normalize = 'none'", "normalize: must be one of"),
    ("label_embeddings = 'once'", "label_embeddings: must be one of"),
    ("finetune = 'lora'", "finetune: must be one of"),
    ("device = 'gpu'", "device: must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'gpu'"),
    ("loss_function = ['clip', 'hinge']",
     "loss_function: entries must be among 'clip', 'bal', 'asl', 'bce', 'focal', 'dbfocal'"),
    ("focal_alpha = 1.5", "focal_alpha: must be in [0, 1], got 1.5"),
    ("focal_gamma = -1", "focal_gamma: must be >= 0, got -1.0"),
    ("dbfocal_lambda = 0", "dbfocal_lambda: must be > 0, got 0.0"),
    ("dbfocal_mu = 'high'", "dbfocal_mu: must be a number or None, got str 'high'"),
    ("dbfocal_kappa = -0.1", "dbfocal_kappa: must be >= 0, got -0.1"),
    ("loss_function = []", "loss_function: must name at least one loss term"),
    ("loss_function = ['bal', 'bal']", "loss_function: must not repeat a loss term"),
    ("batch_size = 0", "batch_size: must be >= 1, got 0"),
    ("lr = 0", "lr: must be > 0, got 0.0"),
    ("label_smoothing = 1", "label_smoothing: must be in [0, 1), got 1.0"),
    ("label_smoothing = -0.1", "label_smoothing: must be in [0, 1)"),
    ("asl_eps = 0", "asl_eps: must be > 0, got 0.0"),
    ("asl_gamma_neg = -1", "asl_gamma_neg: must be >= 0, got -1.0"),
    ("asl_gamma_pos = -0.5", "asl_gamma_pos: must be >= 0, got -0.5"),
    ("asl_clip = -0.1", "asl_clip: must be in [0, 1), got -0.1"),
    ("finetune = 'prompt'\n    label_embeddings = 'per_epoch'",
     "label_embeddings: finetune = 'prompt' trains the class prompts, which needs label_embeddings = 'per_step'"),
    ("train_list = 'train.txt'", "train_list: is only used with dataset = 'custom'"),
    ("dataset = 'custom'", "test_list: is required when dataset = 'custom'"),
])
def test_bad_value_names_the_file_and_the_key(tmp_path, line, message):
    path = write_config(tmp_path, f"class CFG:\n    {line}\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert f"{path}: {message}" in str(error.value)


def test_all_problems_are_reported_at_once(tmp_path):
    path = write_config(tmp_path, "class CFG:\n    batch_size = 0\n    device = 'gpu'\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert "batch_size: must be >= 1" in str(error.value) and "device: must be" in str(error.value)


def test_numbers_are_coerced_to_the_option_type(tmp_path):
    path = write_config(tmp_path, "class CFG:\n    lr = 1\n    loss_function = ('clip',)\n")
    cfg = load_config(path)
    assert type(cfg.lr) is float and cfg.lr == 1.0
    assert cfg.loss_function == ["clip"]


def test_missing_options_take_defaults_and_module_names_are_ignored(tmp_path):
    path = write_config(tmp_path, "import math\nSCALE = 2\n\nclass CFG:\n    epochs = 3 * SCALE\n")
    assert load_config(path) == Config(epochs=6)


def test_options_may_be_inherited(tmp_path):
    path = write_config(tmp_path, "class Base:\n    epochs = 3\n    lr = 0.1\n\nclass CFG(Base):\n    lr = 0.2\n")
    cfg = load_config(path)
    assert (cfg.epochs, cfg.lr) == (3, 0.2)


def test_custom_dataset_with_its_files_is_accepted(tmp_path):
    path = write_config(tmp_path, "class CFG:\n    dataset = 'custom'\n    train_list = 'a.txt'\n"
                                  "    test_list = 'b.txt'\n    class_names = 'c.txt'\n    image_root = 'img'\n")
    assert load_config(path).captions is None


def test_missing_file_and_missing_cfg_class(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.py")
    with pytest.raises(ConfigError, match=r"must define `class CFG`"):
        load_config(write_config(tmp_path, "lr = 1e-5\n"))


@pytest.mark.parametrize("text, expected", [
    ("lr=1e-5", ("lr", 1e-5)),
    ("epochs=3", ("epochs", 3)),
    ("dataset=voc_mlt", ("dataset", "voc_mlt")),
    ("dataset='voc_mlt'", ("dataset", "voc_mlt")),
    ("model_name=ViT-B/16", ("model_name", "ViT-B/16")),
    ("device=cuda:1", ("device", "cuda:1")),
    ("run_dir=2024", ("run_dir", "2024")),
    ("class_caption=a photo of the ", ("class_caption", "a photo of the ")),
    ("train_list=None", ("train_list", None)),
    ("train_list=lists/train.txt", ("train_list", "lists/train.txt")),
    ("loss_function=['clip']", ("loss_function", ["clip"])),
    ("pretrained=false", ("pretrained", False)),
    ("pretrained=True", ("pretrained", True)),
    ("image_cache=0", ("image_cache", False)),
    (" asl_mul = 0.5", ("asl_mul", 0.5)),
])
def test_parse_override(text, expected):
    assert parse_override(text) == expected


@pytest.mark.parametrize("text, message", [
    ("lr", "expected key=value"),
    ("=3", "expected key=value"),
    ("learning_rat=1e-5", "learning_rat: unknown option"),
    ("asl_gama_neg=4", "did you mean 'asl_gamma_neg'?"),
    ("compile=yes", "compile: expected True/False/true/false/1/0, got 'yes'"),
])
def test_bad_override_is_an_error(text, message):
    with pytest.raises(ConfigError, match=re.escape(f"--set {text}: ") + ".*" + re.escape(message)):
        parse_override(text)


def test_overrides_win_and_bad_ones_name_the_override(repo_root):
    demo = repo_root / "configs" / "demo.py"
    cfg = load_config(demo, ["epochs=2", "dataset=voc_mlt", "lr=1e-5"])
    assert (cfg.epochs, cfg.dataset, cfg.lr) == (2, "voc_mlt", 1e-5)
    assert cfg.model_name == "ViT-tiny"  # untouched options keep the file's value
    with pytest.raises(ConfigError, match=re.escape("--set batch_size=0: batch_size: must be >= 1")):
        load_config(demo, ["batch_size=0"])
    with pytest.raises(ConfigError, match=re.escape("--set epochs=two: epochs: must be an int, got str 'two'")):
        load_config(demo, ["epochs=two"])


@pytest.mark.parametrize("text, expected", [
    ("True", True), ("true", True), ("1", True), ("False", False), ("false", False), ("0", False),
])
def test_parse_bool(text, expected):
    assert parse_bool(text) is expected


@pytest.mark.parametrize("text", ["", "yes", "no", "TRUE", "2", "None"])
def test_parse_bool_rejects_anything_else(text):
    with pytest.raises(ConfigError, match="expected True/False/true/false/1/0"):
        parse_bool(text)


def test_to_dict_is_json_and_round_trips(repo_root):
    for stem in [*PUBLISHED, "demo"]:
        cfg = load_config(repo_root / "configs" / f"{stem}.py")
        restored = Config.from_dict(json.loads(json.dumps(cfg.to_dict())))
        assert restored == cfg


def test_from_dict_fills_defaults_and_rejects_unknown_keys():
    assert Config.from_dict({"epochs": 7}) == Config(epochs=7)
    with pytest.raises(ConfigError, match=re.escape("ckpt.pt: lrr: unknown option; did you mean 'lr'?")):
        Config.from_dict({"lrr": 1e-5}, source="ckpt.pt")


def test_config_is_frozen_and_replace_is_checked():
    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0
    assert dataclasses.replace(cfg, epochs=2).epochs == 2
    with pytest.raises(ConfigError, match="batch_size: must be >= 1"):
        dataclasses.replace(cfg, batch_size=0)
