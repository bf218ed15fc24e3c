"""Single-positive baselines as one method: the baseline network trained with an SPML loss.

The network is the baseline's (backbone → global average pooling → linear, imported from
:mod:`mlcl.methods.baseline`); ``method.loss`` picks the loss of :mod:`mlcl.losses.single_positive`:
``an``, ``an_ls``, ``wan``, ``epr``, ``role`` or ``em``. Train it with ``data.labels:
single_positive`` (with full labels ``an`` is plain BCE).

ROLE keeps a :class:`LabelEstimator`, one learnable logit per (training image, class), found by
``batch["index"]``. Its estimates are method state: a parameter, so checkpoints save it and the
optimiser trains it. :func:`pseudo_label_quality` scores them against the hidden full labels.

How the estimator stays right under DDP (every rank must end each step with the same estimates):

- The loss of a rank reads only the rows of its batch, so the estimator's gradient on that rank
  is zero except on those rows. DDP all-reduces that dense ``[N, C]`` gradient like any other
  (averaging), so every rank then holds the gradient of *every* rank's rows, scaled by
  ``1 / world_size`` exactly like the gradient of the shared weights: the step is the one a
  single process would take on the global batch. The cost is an all-reduce of ``N × C`` floats
  per step (26 MB on COCO 2014), which is why a gather of the touched rows would be the choice
  for much larger ``N``.
- The estimator's parameter group has AdamW's ``β1 = 0`` and no weight decay. With momentum, a
  row with zero gradient would keep moving for many steps after its image left the batch; with
  ``β1 = 0`` its step is exactly zero, so only the rows of the batches change. (``onecycle``
  cycles every group's β1, so it is refused for methods with an estimator.)
- Observed positives are fixed at ``logit(0.995)``: the loss reads them as that constant (no
  gradient), and ``after_step`` writes it into the rows of every rank's batch (gathered), so the
  stored estimates, which the correlation matrix and the pseudo-label scores read, carry them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from mlcl.collectives import all_gather_cat
from mlcl.config import ranged
from mlcl.errors import ConfigError
from mlcl.losses.single_positive import (
    assume_negative_loss,
    entropy_maximization_loss,
    expected_positive_loss,
    label_smoothing_loss,
    role_loss,
    weak_assume_negative_loss,
)
from mlcl.methods.base import Batch, MethodOptions, split_weight_decay
from mlcl.methods.baseline import Baseline
from mlcl.methods.registry import register_method
from mlcl.metrics import average_precision

if TYPE_CHECKING:
    from mlcl.config import Config

# Observed positives' estimate (Cole et al. 2021; Scob): σ(logit) = 0.995.
OBSERVED_POSITIVE_PROBABILITY = 0.995


def logit(probability: float) -> float:
    return math.log(probability / (1 - probability))


class LabelEstimator(nn.Module):
    """Learnable label estimates of every training image: logits ``[N, C]``.

    Unknown entries start uniform in ``logit(low)…logit(high)`` (ROLE: 0.4…0.6; Scob: 0.2…0.8);
    observed positives read as ``logit(0.995)`` whatever is stored.
    """

    def __init__(
        self, num_images: int, num_classes: int, init_range: tuple[float, float] = (0.4, 0.6)
    ) -> None:
        super().__init__()
        low, high = init_range
        if not 0 < low <= high < 1:
            raise ConfigError(f"method.estimator_init: need 0 < low <= high < 1, got {init_range}")
        self.logits = nn.Parameter(torch.empty(num_images, num_classes))
        nn.init.uniform_(self.logits, logit(low), logit(high))
        self.positive_logit = logit(OBSERVED_POSITIVE_PROBABILITY)

    def forward(self, index: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Estimate logits ``[B, C]`` of images ``index`` ``[B]`` with observed ``labels``."""
        fixed = torch.full_like(self.logits[index], self.positive_logit)
        return torch.where(labels > 0.5, fixed, self.logits[index])

    @torch.no_grad()
    def record_observed(self, index: torch.Tensor, labels: torch.Tensor) -> None:
        """Write the fixed observed positives of images ``index`` into the stored logits."""
        rows = self.logits[index]
        self.logits[index] = torch.where(
            labels > 0.5, torch.full_like(rows, self.positive_logit), rows
        )

    @torch.no_grad()
    def probabilities(self) -> torch.Tensor:
        """``σ(logits)`` ``[N, C]``."""
        return torch.sigmoid(self.logits.detach().float())

    @torch.no_grad()
    def correlation(self) -> torch.Tensor:
        """Class correlation of the estimates, ``[C, C]`` (:func:`label_correlation`)."""
        return label_correlation(self.probabilities())


def label_correlation(probabilities: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``R[i, j] = mean_n(x_ni x_nj) / mean_n(x_ni)`` with 1 on the diagonal (Scob).

    For binary labels this is ``P(j | i)``, the fraction of images with class ``i`` that also
    have class ``j``; for estimates in [0, 1] it is the soft version.
    """
    probabilities = probabilities.float()
    joint = probabilities.T @ probabilities / len(probabilities)  # [C, C]
    marginal = probabilities.mean(dim=0)  # [C]
    correlation = joint / marginal[:, None].clamp(min=eps)
    correlation.fill_diagonal_(1.0)
    return correlation


@torch.no_grad()
def pseudo_label_quality(
    method_or_estimator: nn.Module, dataset: Any, threshold: float = 0.5
) -> dict[str, float]:
    """How good the label estimates are, against the hidden truth.

    ``method_or_estimator``: a :class:`LabelEstimator` or a method that has one
    (``label_estimator``); ``dataset``: its training set (``labels``: the observed positives,
    ``full_labels``: the truth). An estimate counts as a label where ``σ(logit) ≥ threshold``
    (observed positives always do). Returns percentages: ``precision``, ``recall``,
    ``hidden_recall`` (the share of the *unobserved* true positives found: the observed one is
    given, so recall alone flatters), ``hidden_ap`` (the average precision of the estimates as one
    ranking of all unobserved entries, hidden positives against true negatives: threshold-free;
    chance is the share of hidden positives among them) and ``positives_per_image``.
    """
    estimator = getattr(method_or_estimator, "label_estimator", method_or_estimator)
    if not isinstance(estimator, LabelEstimator):
        raise TypeError(f"{type(method_or_estimator).__name__} has no label estimator")
    observed = torch.as_tensor(dataset.labels).cpu() > 0.5
    truth = torch.as_tensor(dataset.full_labels).bool().cpu()
    estimates = estimator.probabilities().cpu()
    predicted = (estimates >= threshold) | observed
    true_positives = (predicted & truth).sum().item()
    hidden = truth & ~observed
    unobserved = ~observed
    ranking_ap = average_precision(estimates[unobserved][:, None], hidden[unobserved][:, None])
    return {
        "precision": 100.0 * true_positives / max(predicted.sum().item(), 1),
        "recall": 100.0 * true_positives / max(truth.sum().item(), 1),
        "hidden_recall": 100.0 * (predicted & hidden).sum().item() / max(hidden.sum().item(), 1),
        "hidden_ap": 100.0 * float(ranking_ap[0]),
        "positives_per_image": predicted.sum().item() / max(len(predicted), 1),
    }


def estimator_param_group(
    estimator: LabelEstimator, lr: float, betas: tuple[float, float]
) -> dict[str, Any]:
    """The estimator's AdamW group: its own learning rate, β1 = 0 and no weight decay, so that
    only the rows of the batch move (see the module docstring)."""
    return {"params": [estimator.logits], "lr": lr, "betas": (0.0, betas[1]), "weight_decay": 0.0}


def check_schedule_for_estimator(config: Config) -> None:
    """Refuse a schedule that would give the estimator's AdamW group momentum."""
    if config.optim.schedule == "onecycle":
        raise ConfigError(
            "optim.schedule: onecycle cycles AdamW's β1 in every parameter group, which would give "
            "the label estimator momentum and move the estimates of images outside the batch; "
            "use cosine, step or constant"
        )


@dataclass
class SinglePositiveOptions(MethodOptions):
    loss: Literal["an", "an_ls", "wan", "epr", "role", "em"] = "an"
    # k̂, the expected number of positives per image (EPR, ROLE): Cole et al. use the training
    # set's mean, 2.9 on COCO 2014, 1.5 on VOC 2012, 1.9 on NUS-WIDE.
    expected_positives: float = ranged(2.9, "> 0")
    label_smoothing: float = ranged(0.1, "[0, 1)")  # AN-LS: ε (Cole et al.)
    # EM: α (Zhou et al. 2022: 0.1 COCO / NUS-WIDE, 0.2 VOC)
    em_alpha: float = ranged(0.1, "[0, 1]")
    # ROLE: σ of the initial logits
    estimator_init: tuple[float, float] = ranged((0.4, 0.6), "(0, 1)")
    # ROLE: the estimator learns 10× faster (Cole et al.)
    lr_scale_estimator: float = ranged(10.0, ">= 0")
    dropout: float = ranged(0.0, "[0, 1)")  # before the classifier (the baseline's option)


@register_method
class SinglePositive(Baseline):
    """Backbone → GAP → linear, trained with the single-positive loss ``method.loss``."""

    name = "spml"
    Options = SinglePositiveOptions

    def __init__(self, config, num_classes: int, num_train_images: int) -> None:
        super().__init__(config, num_classes, num_train_images)
        self.label_estimator: LabelEstimator | None = None
        if self.options.loss == "role":
            check_schedule_for_estimator(config)
            self.label_estimator = LabelEstimator(
                num_train_images, num_classes, self.options.estimator_init
            )

    def spml_loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        options, labels = self.options, batch["labels"]
        if options.loss == "an":
            return assume_negative_loss(logits, labels)
        if options.loss == "an_ls":
            return label_smoothing_loss(logits, labels, options.label_smoothing)
        if options.loss == "wan":
            return weak_assume_negative_loss(logits, labels)
        if options.loss == "epr":
            return expected_positive_loss(logits, labels, options.expected_positives)
        if options.loss == "em":
            return entropy_maximization_loss(logits, labels, options.em_alpha)
        estimates = self.label_estimator(batch["index"], labels)
        return role_loss(logits, estimates, labels, options.expected_positives)

    def forward(self, batch: Batch, phase: str = "main") -> dict[str, torch.Tensor]:
        logits = self.predict(batch["image"])
        loss = self.spml_loss(logits, batch)
        return {"loss": loss, self.options.loss: loss.detach(), "logits": logits.detach()}

    def param_groups(self, phase: str, weight_decay: float) -> list[dict[str, Any]]:
        if phase != "main":
            raise ValueError(f"{type(self).__name__} has no phase {phase!r}")
        network = (
            (name, p)
            for name, p in self.named_parameters()
            if not name.startswith("label_estimator")
        )
        groups = split_weight_decay(network, weight_decay)
        if self.label_estimator is not None:
            optim = self.config.optim
            lr = optim.lr * self.options.lr_scale_estimator
            groups.append(estimator_param_group(self.label_estimator, lr, optim.betas))
        return groups

    @torch.no_grad()
    def after_step(self, batch: Batch, outputs: dict[str, torch.Tensor]) -> None:
        if self.label_estimator is not None:
            index, labels = all_gather_cat(batch["index"]), all_gather_cat(batch["labels"])
            self.label_estimator.record_observed(index, labels)
