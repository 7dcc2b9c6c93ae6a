"""The baseline losses on the class logits ("bce", "focal", "dbfocal"): each against values
derived by hand from its published formula, entry by entry in float64, and in the objective
alone or with the contrastive term."""
import math
from fractions import Fraction

import pytest
import torch

import clip
from loss_examples import LOGITS, TARGETS
from process_group import save_rank_result, set_rendezvous_env, spawn_and_collect
from tailclip.config import Config, ConfigError, load_config
from tailclip.data.balance import balance_weights
from tailclip.engine import distributed
from tailclip.factory import build_objective, dbfocal_settings
from tailclip.losses import (
    BinaryCrossEntropyLoss,
    DistributionBalancedFocalLoss,
    SigmoidFocalLoss,
    clip_contrastive_loss,
)
from tailclip.model import TailCLIP


def sigmoid(v):
    return 1 / (1 + math.exp(-v))


def tensor(rows):
    return torch.tensor(rows, dtype=torch.float64)


def random_problem(seed, batch=6, classes=5):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(batch, classes, generator=g) * 3).double()
    targets = (torch.rand(batch, classes, generator=g) < 0.4).double()
    targets[:, seed % classes] = 1  # every image has a label
    return logits, targets


# ---------------------------------------------------------------- BCE and focal


def test_bce_is_the_mean_of_minus_log_likelihoods():
    # Entry by entry: -log p for a positive, -log(1 - p) for a negative, p = sigmoid(x).
    by_hand = -sum(math.log(sigmoid(x)) if y else math.log(1 - sigmoid(x))
                   for xs, ys in zip(LOGITS, TARGETS) for x, y in zip(xs, ys)) / 6
    assert BinaryCrossEntropyLoss()(tensor(LOGITS), tensor(TARGETS)).item() == pytest.approx(by_hand, rel=1e-12)
    # The worked value: (log(1+e^-2) + log(1+e^-1) + log(1+e^0.5) + log(1+e^1) + log(1+e^-4)
    # + log(1+e^2)) / 6 = (0.1269 + 0.3133 + 0.9741 + 1.3133 + 0.0181 + 2.1269) / 6.
    assert by_hand == pytest.approx(0.8121, abs=1e-4)


def focal_by_hand(logits, targets, gamma, alpha):
    total = 0.0
    for xs, ys in zip(logits, targets):
        for x, y in zip(xs, ys):
            p_t = sigmoid(x) if y else 1 - sigmoid(x)
            alpha_t = alpha if y else 1 - alpha
            total += -alpha_t * (1 - p_t) ** gamma * math.log(p_t)
    return total / sum(len(row) for row in logits)


@pytest.mark.parametrize("gamma,alpha", [(2.0, 0.25), (0.5, 0.9), (3.0, 0.0)])
def test_focal_loss_matches_the_formula(gamma, alpha):
    loss = SigmoidFocalLoss(gamma=gamma, alpha=alpha)(tensor(LOGITS), tensor(TARGETS))
    assert loss.item() == pytest.approx(focal_by_hand(LOGITS, TARGETS, gamma, alpha), rel=1e-12)


def test_focal_loss_without_focusing_is_half_the_bce():
    logits, targets = random_problem(3)
    assert torch.allclose(SigmoidFocalLoss(gamma=0.0, alpha=0.5)(logits, targets),
                          BinaryCrossEntropyLoss()(logits, targets) / 2, rtol=1e-12)


def test_focal_defaults_are_the_papers():
    loss = SigmoidFocalLoss()
    assert (loss.gamma, loss.alpha) == (2.0, 0.25)
    assert (Config().focal_gamma, Config().focal_alpha) == (2.0, 0.25)


# ---------------------------------------------------------------- distribution-balanced focal

# A training split of 6 images over 3 classes: class 0 in 4 images, class 1 in 3, class 2 in 1.
TRAIN_LABEL_SETS = [(0,), (0, 1), (0, 1), (0,), (1, 2), ()]
COUNTS = [4, 3, 1]
NUM_TRAIN = 6


def dbfocal_by_hand(logits, targets, counts, num_train, alpha, beta, mu, lam, kappa, gamma, scale):
    """The published formula, one entry at a time in Python floats: re-balanced weight from the
    class-level and instance-level sampling probabilities, the negative-tolerant logit
    (bias kappa * log(p / (1 - p)), negatives scaled by lambda, their loss by 1 / lambda, the
    bias divided by lambda as in the authors' code), focal factor and constant scale."""
    num_classes = len(counts)
    total = 0.0
    for xs, ys in zip(logits, targets):
        instance_probability = sum(1 / num_classes / counts[j] for j in range(num_classes) if ys[j])
        for c, (x, y) in enumerate(zip(xs, ys)):
            class_probability = 1 / num_classes / counts[c]
            r = class_probability / instance_probability if instance_probability else math.inf
            r_hat = alpha + (1.0 if r == math.inf else sigmoid(beta * (r - mu)))
            prior = counts[c] / num_train
            bias = kappa * math.log(prior / (1 - prior)) / lam
            if y:
                z = x + bias
                p_t, weight = sigmoid(z), r_hat
            else:
                z = lam * (x + bias)
                p_t, weight = sigmoid(-z), r_hat / lam  # 1 - sigmoid(z), without cancellation
            total += scale * weight * (1 - p_t) ** gamma * -math.log(p_t)
    return total / (len(logits) * num_classes)


def priors():
    return torch.tensor(COUNTS, dtype=torch.float64) / NUM_TRAIN


SETTINGS = [
    dict(alpha=0.1, beta=10.0, mu=0.2, lam=2.0, kappa=0.05, gamma=2.0, scale=2.0),  # LMPT COCO-LT
    dict(alpha=0.1, beta=10.0, mu=0.3, lam=5.0, kappa=0.05, gamma=2.0, scale=2.0),  # LMPT VOC-LT
    dict(alpha=0.5, beta=3.0, mu=0.6, lam=1.5, kappa=0.4, gamma=0.5, scale=1.0),
]


@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize("seed", [0, 1])
def test_dbfocal_matches_an_independent_derivation(settings, seed):
    logits, targets = random_problem(seed, batch=7, classes=3)
    targets[-1] = 0  # an image without labels: r = inf, weight alpha + 1
    loss = DistributionBalancedFocalLoss(
        priors(), alpha=settings["alpha"], beta=settings["beta"], mu=settings["mu"],
        neg_scale=settings["lam"], kappa=settings["kappa"], gamma=settings["gamma"],
        scale=settings["scale"])(logits, targets)
    expected = dbfocal_by_hand(logits.tolist(), targets.tolist(), COUNTS, NUM_TRAIN, **settings)
    assert loss.item() == pytest.approx(expected, rel=1e-10)


def test_dbfocal_reduces_to_bce_without_its_parts():
    # beta = 0 makes every weight alpha + 1/2 = 1; lambda = 1 and kappa = 0 leave the logits
    # alone; gamma = 0 and scale = 1 remove the focal factor.
    logits, targets = random_problem(4, classes=3)
    plain = DistributionBalancedFocalLoss(priors(), alpha=0.5, beta=0.0, neg_scale=1.0, kappa=0.0,
                                          gamma=0.0, scale=1.0)
    assert torch.allclose(plain(logits, targets), BinaryCrossEntropyLoss()(logits, targets), rtol=1e-12)


def test_rebalancing_weights_are_the_ratio_of_class_to_instance_sampling_probability():
    """Class-aware sampling (draw a class uniformly, then one of its images uniformly),
    enumerated exactly: P^C(k, c) is the probability of drawing image k through class c,
    P^I(k) the probability of drawing image k at all. r = P^C / P^I is the same for every
    class of an image's labels as for classes it lacks (a negative gets the weight it
    would get as a positive)."""
    num_classes = len(COUNTS)
    holders = {c: [k for k, labels in enumerate(TRAIN_LABEL_SETS) if c in labels] for c in range(num_classes)}
    through = {(k, c): Fraction(1, num_classes) * Fraction(1, len(holders[c]))
               for c in range(num_classes) for k in range(len(TRAIN_LABEL_SETS))}
    drawn = [sum((through[k, c] for c in range(num_classes) if k in holders[c]), Fraction(0))
             for k in range(len(TRAIN_LABEL_SETS))]
    assert sum(drawn) == 1
    alpha, beta, mu = 0.1, 10.0, 0.2
    loss = DistributionBalancedFocalLoss(priors(), alpha=alpha, beta=beta, mu=mu)
    targets = torch.zeros(len(TRAIN_LABEL_SETS), num_classes, dtype=torch.float64)
    for k, labels in enumerate(TRAIN_LABEL_SETS):
        targets[k, list(labels)] = 1
    weights = loss.rebalancing_weights(targets)
    for k in range(len(TRAIN_LABEL_SETS) - 1):  # the last image has no label
        for c in range(num_classes):
            r = float(through[k, c] / drawn[k])
            assert weights[k, c].item() == pytest.approx(alpha + sigmoid(beta * (r - mu)), rel=1e-12)
    assert torch.equal(weights[-1], torch.full((num_classes,), alpha + 1, dtype=torch.float64))
    # Image 4 holds the rarest class: it is drawn far more often than its class 2 alone asks.
    assert weights[4, 2] < weights[0, 0]
    # P^I is what TailCLIP's balanced sampler draws with sample_power = 1: its sample weights
    # are the sums of N / n_c over an image's classes, proportional to P^I.
    _, sample_weights = balance_weights(TRAIN_LABEL_SETS[:-1], num_classes, 1.0, 1.0)
    instance = torch.tensor([float(p) for p in drawn[:-1]], dtype=torch.float64)
    assert torch.allclose(sample_weights, instance / instance.max(), rtol=1e-12)


def test_dbfocal_is_a_mean_over_rows_so_the_global_batch_splits():
    # Under torchrun the objective sees the gathered batch; a per-entry loss with per-row
    # weights also equals the mean of the per-process halves (BAL's max normalisation does not).
    logits, targets = random_problem(5, batch=8, classes=3)
    loss = DistributionBalancedFocalLoss(priors())
    halves = (loss(logits[:4], targets[:4]) + loss(logits[4:], targets[4:])) / 2
    assert torch.allclose(loss(logits, targets), halves, rtol=1e-12)


def test_dbfocal_checks_its_priors():
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        DistributionBalancedFocalLoss(torch.tensor([0.5, 1.0]))
    without = DistributionBalancedFocalLoss(None)
    with pytest.raises(ValueError, match="class frequencies"):
        without(*random_problem(0, classes=3))


def test_dbfocal_gradient_is_finite_in_float32_with_saturated_logits():
    logits = torch.tensor([[60.0, -60.0, 0.0], [-60.0, 60.0, 5.0]], requires_grad=True)
    targets = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 1.0]])
    DistributionBalancedFocalLoss(priors())(logits, targets).backward()
    assert torch.isfinite(logits.grad).all()


# ---------------------------------------------------------------- objective and config


NAMES = ["red", "green", "blue"]


def tiny_model() -> TailCLIP:
    return TailCLIP(clip.create_model("ViT-tiny"), clip.tokenize(["a photo of a " + n for n in NAMES]))


def objective(**options):
    """`build_objective` of the config ``options`` for a tiny model, with the classes' priors."""
    return build_objective(Config(**options), tiny_model(), class_priors=priors())


def objective_inputs(seed=0, classes=3):
    logits, targets = random_problem(seed, batch=6, classes=classes)
    g = torch.Generator().manual_seed(seed)
    image_emb, caption_emb = (torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
                              for _ in range(2))
    return dict(image_emb=image_emb, caption_emb=caption_emb, logit_scale=torch.tensor(1 / 0.07),
                logits=logits.float(), targets=targets.float())


BASELINES = {
    "bce": BinaryCrossEntropyLoss(),
    "focal": lambda x, y: SigmoidFocalLoss(gamma=2.0, alpha=0.25)(x, y),
    "dbfocal": lambda x, y: DistributionBalancedFocalLoss(priors(), mu=0.2, neg_scale=2.0)(x, y),
}


@pytest.mark.parametrize("name", BASELINES)
def test_each_baseline_works_alone_and_with_the_contrastive_term(name):
    inputs = objective_inputs()
    term = BASELINES[name](inputs["logits"], inputs["targets"])
    alone = objective(loss_function=[name], asl_mul=0.5)(**inputs)
    assert set(alone) == {"loss", f"loss_{name}"}
    assert torch.allclose(alone[f"loss_{name}"], term)
    assert torch.allclose(alone["loss"], 0.5 * term)
    both = objective(loss_function=["clip", name], asl_mul=3.0)(**inputs)
    contrastive = clip_contrastive_loss(inputs["image_emb"], inputs["caption_emb"], inputs["logit_scale"])
    assert set(both) == {"loss", "loss_clip", f"loss_{name}"}
    assert torch.allclose(both["loss"], contrastive + 3.0 * term)


@pytest.mark.parametrize("dataset,mu,lam", [("voc_mlt", 0.3, 5.0), ("coco_mlt", 0.2, 2.0),
                                            ("synthetic_mlt", 0.2, 2.0)])
def test_dbfocal_defaults_are_lmpts_for_the_dataset(dataset, mu, lam):
    loss = DistributionBalancedFocalLoss(priors(), **dbfocal_settings(Config(dataset=dataset)))
    assert (loss.alpha, loss.beta, loss.mu, loss.neg_scale, loss.gamma, loss.scale) == (0.1, 10.0, mu, lam, 2.0, 2.0)
    assert torch.allclose(loss.logit_bias, 0.05 / lam * torch.log(priors() / (1 - priors())))
    chosen = DistributionBalancedFocalLoss(priors(), **dbfocal_settings(Config(dataset=dataset, dbfocal_mu=0.5,
                                                                               dbfocal_lambda=3.0)))
    assert (chosen.mu, chosen.neg_scale) == (0.5, 3.0)


def test_config_accepts_the_baseline_terms_and_options(tmp_path):
    path = tmp_path / "cfg.py"
    path.write_text("class CFG:\n    loss_function = ['clip', 'dbfocal']\n    dbfocal_lambda = 5\n")
    cfg = load_config(path, ["dbfocal_mu=0.25", "focal_gamma=1"])
    assert cfg.loss_function == ["clip", "dbfocal"]
    assert (cfg.dbfocal_lambda, cfg.dbfocal_mu, cfg.focal_gamma) == (5.0, 0.25, 1.0)
    assert load_config(path, ["dbfocal_mu=None"]).dbfocal_mu is None
    with pytest.raises(ConfigError, match=r"--set dbfocal_lambda=-1: dbfocal_lambda: must be > 0"):
        load_config(path, ["dbfocal_lambda=-1"])


def test_a_tailclip_model_trains_with_dbfocal_from_the_data_priors():
    torch.manual_seed(0)
    model = tiny_model()
    images = torch.rand(4, 3, 64, 64)
    targets = torch.tensor([[1.0, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1]])
    outputs = model(images, clip.tokenize([f"thing {i}" for i in range(4)]))
    out = build_objective(Config(loss_function=["clip", "dbfocal"]), model, class_priors=priors())(
        **outputs, targets=targets)
    out["loss"].backward()
    assert set(out) >= {"loss_clip", "loss_dbfocal"}
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# ---------------------------------------------------------------- under torchrun

ALL_TERMS = ["clip", "bce", "focal", "dbfocal"]


def _global_batch_worker(rank: int, port: int, folder: str) -> None:
    """Process ``rank`` of 2: its half of the batch through ``GlobalBatchObjective``."""
    torch.set_num_threads(1)
    inputs = objective_inputs(seed=6)
    all_terms = objective(loss_function=ALL_TERMS, asl_mul=0.7)
    set_rendezvous_env(rank, 2, port)
    distributed.init_distributed("cpu")
    try:
        rows = slice(3 * rank, 3 * rank + 3)
        local = {name: value[rows].clone().requires_grad_(True) if name != "logit_scale" else value
                 for name, value in inputs.items()}
        local["targets"].requires_grad_(False)
        out = distributed.GlobalBatchObjective(all_terms)(**local)
        out["loss"].backward()
        save_rank_result({"terms": {k: v.detach() for k, v in out.items() if k.startswith("loss")},
                          "logits_grad": local["logits"].grad}, folder, rank)
    finally:
        distributed.cleanup()


def test_baselines_on_the_global_batch_of_two_processes_equal_one_process(tmp_path):
    """Each process gets the single-process loss, and through its own rows twice the
    single-process gradient (DistributedDataParallel's average over 2 processes halves it)."""
    results = spawn_and_collect(_global_batch_worker, tmp_path, world=2)
    inputs = objective_inputs(seed=6)
    logits = inputs["logits"].clone().requires_grad_(True)
    single = objective(loss_function=ALL_TERMS, asl_mul=0.7)(**{**inputs, "logits": logits})
    single["loss"].backward()
    for rank, result in enumerate(results):
        assert set(result["terms"]) == {"loss", *(f"loss_{name}" for name in ALL_TERMS)}
        for name, value in result["terms"].items():
            assert torch.allclose(value, single[name].detach(), rtol=1e-6), name
        assert torch.allclose(result["logits_grad"], 2 * logits.grad[3 * rank:3 * rank + 3], rtol=1e-5, atol=1e-9)
