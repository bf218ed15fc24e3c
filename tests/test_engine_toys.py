"""Tiny in-memory data and methods for the engine's tests (imported by tests/test_engine_*.py,
tests/test_ddp.py and tests/test_cli.py), and a check that they keep the engine's contracts."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mlcl.collectives import all_reduce_mean, rank
from mlcl.config import load_config
from mlcl.losses import binary_cross_entropy
from mlcl.methods import Method, MethodOptions, register_method, split_weight_decay

NUM_CLASSES = 5


class ToyDataset(torch.utils.data.Dataset):
    """``size`` images of ``image_size`` px: each present class adds its own fixed pattern, so
    a small network learns the labels in a few steps. Deterministic for a seed."""

    def __init__(
        self, size: int = 32, image_size: int = 16, seed: int = 0, num_classes: int = NUM_CLASSES
    ) -> None:
        generator = torch.Generator().manual_seed(seed)
        patterns = torch.randn(num_classes, 3, image_size, image_size, generator=generator)
        self.full_labels = torch.rand(size, num_classes, generator=generator) < 0.4  # [N, C]
        noise = 0.3 * torch.randn(size, 3, image_size, image_size, generator=generator)
        self.images = torch.einsum("nc,cdhw->ndhw", self.full_labels.float(), patterns) + noise
        self.labels = self.full_labels.float()
        self.observed = torch.ones_like(self.full_labels)
        self.class_names = [f"class{c}" for c in range(num_classes)]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {
            "image": self.images[index],
            "labels": self.labels[index],
            "observed": self.observed[index],
            "index": torch.tensor(index),
        }


@dataclass
class ToyOptions(MethodOptions):
    nan_steps: list[int] = field(default_factory=list)  # training forwards (from 1) with NaN loss
    nan_rank: int = -1  # only this process makes those losses NaN (-1: every process)
    dropout: float = 0.0  # makes training depend on the random number generators


class ToyNet(nn.Module):
    """conv → ReLU → global average pooling → (dropout) → linear; no BatchNorm."""

    def __init__(self, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(8, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = F.relu(self.conv(images)).mean(dim=(2, 3))  # [B, 8]
        return self.classifier(self.dropout(features))  # [B, C]


@register_method
class ToyMethod(Method):
    """One phase; keeps state in buffers (a running label frequency, counters) as real methods
    do, so that checkpoints and resumption are tested on method state too."""

    name = "test-toy"
    Options = ToyOptions

    def __init__(self, config, num_classes: int, num_train_images: int) -> None:
        super().__init__(config, num_classes, num_train_images)
        self.net = ToyNet(num_classes, self.options.dropout)
        self.register_buffer("label_frequency", torch.zeros(num_classes))
        self.register_buffer("forward_calls", torch.zeros((), dtype=torch.long))
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.long))

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def forward(self, batch, phase: str = "main") -> dict[str, torch.Tensor]:
        self.forward_calls += 1
        logits = self.predict(batch["image"])
        loss = binary_cross_entropy(logits, batch["labels"], reduction="mean")
        nan_here = self.options.nan_rank in (-1, rank())
        if nan_here and int(self.forward_calls) in self.options.nan_steps:
            loss = loss * float("nan")
        return {"loss": loss, "bce": loss.detach(), "logits": logits.detach()}

    @torch.no_grad()
    def after_step(self, batch, outputs) -> None:
        # State that must agree across processes is averaged over them, as real methods do.
        batch_frequency = all_reduce_mean(batch["labels"].mean(dim=0))
        self.label_frequency.lerp_(batch_frequency, 0.1)

    def on_epoch_end(self, epoch: int) -> None:
        self.epochs_seen += 1

    def extra_metrics(self, outputs, dataset) -> dict[str, float]:
        return {"mean_logit": float(outputs["logits"].mean())}


@register_method
class TwoPhaseToyMethod(Method):
    """Two phases with two optimisers, like Scob: "classify" trains the network on the labels,
    "align" trains a projector on the (detached) features of the updated network."""

    name = "test-two-phase"
    phases = ("classify", "align")
    find_unused_parameters = True

    def __init__(self, config, num_classes: int, num_train_images: int) -> None:
        super().__init__(config, num_classes, num_train_images)
        self.net = ToyNet(num_classes)
        self.projector = nn.Linear(num_classes, 4)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def forward(self, batch, phase: str = "main") -> dict[str, torch.Tensor]:
        logits = self.predict(batch["image"])
        if phase == "classify":
            loss = binary_cross_entropy(logits, batch["labels"], reduction="mean")
            return {"loss": loss, "bce": loss.detach(), "logits": logits.detach()}
        embedding = F.normalize(self.projector(logits.detach()), dim=1)  # [B, 4]
        loss = (1 - embedding @ embedding.T).mean()
        return {"loss": loss, "spread": loss.detach()}

    def param_groups(self, phase: str, weight_decay: float):
        module = self.net if phase == "classify" else self.projector
        return split_weight_decay(module.named_parameters(), weight_decay)


def toy_config(out_dir, method: str = "test-toy", overrides: dict | None = None):
    """A configuration for the toys: CPU, float32, no workers, no progress bars."""
    values = {
        "model.method": method,
        "data.batch_size": 8,
        "data.workers": 0,
        "optim.lr": 1e-2,
        "run.out_dir": str(out_dir),
        "run.epochs": 2,
        "run.device": "cpu",
        # float32 on every CPU: tests compare runs to 1e-5, and run.amp=auto trains in bf16 on
        # a CPU with native bf16
        "run.amp": "off",
        "run.progress": False,
        "run.channels_last": False,
    }
    return load_config(None, values | (overrides or {}))


def test_toy_dataset_yields_the_batch_contract():
    dataset = ToyDataset(size=6, image_size=8)
    item = dataset[3]
    assert item["image"].shape == (3, 8, 8)
    assert item["labels"].dtype == torch.float32 and item["observed"].dtype == torch.bool
    assert int(item["index"]) == 3
    torch.testing.assert_close(item["labels"], dataset.full_labels[3].float())
