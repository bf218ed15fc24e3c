"""The q2l, mulcon and sadcl methods: training steps, SADCL's memory bank and prototypes, their
checkpoints, the two-stage options and the presets."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from mlcl.config import load_config
from mlcl.engine import fit, load_checkpoint, load_method
from mlcl.errors import CheckpointError, ConfigError
from mlcl.losses import sscl_loss
from mlcl.methods import build_method
from mlcl.methods.sadcl import class_prototypes, load_prototypes
from tests.test_engine_toys import ToyDataset

NUM_CLASSES = 4
TINY = {"model.backbone": "test_resnet", "data.batch_size": 6}  # 96 channels at stride 32
SMALL_DECODER = {"method.hidden_dim": 32, "method.dropout": 0.0}
SMALL = {
    "q2l": SMALL_DECODER,
    "mulcon": {"method.hidden_dim": 32, "method.projection_dim": 16},
    "sadcl": SMALL_DECODER | {"method.projection_dim": 16},
}


def make_method(name: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    config = load_config(None, {"model.method": name, **TINY, **SMALL[name], **overrides})
    return build_method(config, num_classes=NUM_CLASSES, num_train_images=12)


def make_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.tensor(
        [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 0]]
    ).float()  # one positive, several, none; class 3 absent
    return {
        "image": torch.randn(6, 3, 64, 64, generator=generator),
        "labels": labels,
        "observed": torch.ones(6, NUM_CLASSES, dtype=torch.bool),
        "index": torch.arange(6),
    }


@pytest.mark.parametrize("name", ["q2l", "mulcon", "sadcl"])
def test_a_few_training_steps_reduce_the_loss(name):
    method = make_method(name)
    method.on_epoch_start(0)
    optimizer = torch.optim.AdamW(method.param_groups("main", 1e-4), lr=1e-3)
    batch = make_batch()
    losses = []
    for _ in range(6):
        outputs = method(batch)
        optimizer.zero_grad()
        outputs["loss"].backward()
        optimizer.step()
        method.after_step(batch, outputs)
        losses.append(outputs["loss"].item())
    assert losses[-1] < losses[0], losses
    expected_terms = {"q2l": {"asl"}, "mulcon": {"bce", "contrastive"}, "sadcl": {"sscl", "pscl"}}
    assert expected_terms[name] <= set(outputs)
    method.eval()
    assert method.predict(batch["image"]).shape == (6, NUM_CLASSES)
    assert method.attention_maps(batch["image"]).shape == (6, NUM_CLASSES, 2, 2)


def test_sadcl_initialises_prototypes_and_memory_from_the_first_batch():
    method = make_method("sadcl")
    batch = make_batch()
    outputs = method(batch)
    features, labels = outputs["label_features"], batch["labels"]
    for c in range(3):
        mean = features[labels[:, c] == 1, c].mean(dim=0)
        torch.testing.assert_close(method.prototypes[c].detach(), mean)
        torch.testing.assert_close(method.memory[:, c], mean.expand(6, -1))
    assert method.prototype_ready.tolist() == [True, True, True, False]  # class 3: not yet seen


def test_sadcl_sscl_is_sscl_loss_on_the_batch_and_the_projected_memory():
    method = make_method("sadcl")
    batch = make_batch()
    method(batch)  # initialises the prototypes and memory
    method.memory.add_(torch.randn_like(method.memory))  # memory different from the prototypes
    method.eval()  # no dropout, no re-initialisation
    outputs = method.model(batch["image"])
    sscl, _ = method.contrastive_losses(outputs["label_features"], batch["labels"])
    views = torch.stack(
        (method.projector(outputs["label_features"]), method.projector(method.memory)), dim=1
    )
    torch.testing.assert_close(sscl, sscl_loss(views, batch["labels"], temperature=0.2))


def test_sadcl_memory_takes_confident_present_labels_only():
    method = make_method("sadcl", **{"data.batch_size": 8})  # memory larger than the batch
    batch = make_batch()
    before = method.memory.clone()
    labels = batch["labels"]
    logits = torch.full((6, NUM_CLASSES), 3.0)  # p = 0.95
    logits[1, 0] = 1.0  # p = 0.73: present but not confident enough
    logits[4] = 5.0  # image without labels: confident, but nothing present
    features = torch.randn(6, NUM_CLASSES, 32)
    method.after_step(batch, {"logits": logits, "label_features": features})
    updated = (labels == 1) & (logits.sigmoid() > 0.8)
    assert not updated[1, 0] and updated.sum() == 9
    for i in range(8):
        for c in range(NUM_CLASSES):
            expected = features[i, c] if i < 6 and updated[i, c] else before[i, c]
            torch.testing.assert_close(method.memory[i, c], expected)


def test_sadcl_momentum_prototypes_move_towards_the_batch_means():
    method = make_method("sadcl", **{"method.prototype_update": "momentum"})
    assert "prototypes" in dict(method.named_buffers())
    assert "prototypes" not in dict(method.named_parameters())
    before = method.prototypes.clone()
    batch = make_batch()
    features = torch.randn(6, NUM_CLASSES, 32)
    method.after_step(batch, {"logits": torch.zeros(6, NUM_CLASSES), "label_features": features})
    for c in range(3):
        mean = features[batch["labels"][:, c] == 1, c].mean(dim=0)
        torch.testing.assert_close(method.prototypes[c], 0.99 * before[c] + 0.01 * mean)
    torch.testing.assert_close(method.prototypes[3], before[3])  # no positive: unchanged


@pytest.mark.parametrize("update", ["learned", "momentum"])
def test_sadcl_state_survives_a_state_dict_round_trip(update):
    method = make_method("sadcl", **{"method.prototype_update": update})
    method.on_epoch_start(3)
    batch = make_batch()
    outputs = method(batch)
    method.after_step(batch, outputs)
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    restored = make_method("sadcl", seed=1, **{"method.prototype_update": update})
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    for name in ("prototypes", "memory", "prototype_ready", "epoch"):
        torch.testing.assert_close(getattr(restored, name), getattr(method, name), msg=name)
    method.eval(), restored.eval()
    torch.testing.assert_close(method(batch)["loss"], restored(batch)["loss"])


def test_contrastive_start_epoch_makes_stage_one_classification_only():
    for name, term in (("mulcon", "contrastive"), ("sadcl", "sscl")):
        method = make_method(name, **{"method.contrastive_start_epoch": 2})
        assert method.find_unused_parameters  # the projector is idle in stage 1
        method.on_epoch_start(1)
        assert term not in method(make_batch())
        method.on_epoch_start(2)
        assert term in method(make_batch())


def test_init_from_loads_the_network_of_a_stage_one_checkpoint(tmp_path):
    stage_one = make_method("q2l", seed=3)
    path = tmp_path / "q2l.pt"
    torch.save({"model": stage_one.state_dict(), "ema": None}, path)
    stage_two = make_method("sadcl", **{"method.init_from": str(path)})
    for name, value in stage_one.model.state_dict().items():
        torch.testing.assert_close(stage_two.model.state_dict()[name], value, msg=name)
    with pytest.raises(CheckpointError, match="EMA"):
        make_method("sadcl", **{"method.init_from": str(path), "method.init_from_ema": True})
    with pytest.raises(ConfigError, match="file not found"):
        make_method("sadcl", **{"method.init_from": str(tmp_path / "missing.pt")})
    with pytest.raises(CheckpointError, match="shape"):
        make_method("sadcl", **{"method.init_from": str(path), "method.hidden_dim": 64})


def test_prototypes_file_npy_and_torch(tmp_path):
    prototypes = np.random.default_rng(0).standard_normal((NUM_CLASSES, 32)).astype(np.float32)
    np.save(tmp_path / "p.npy", prototypes)
    torch.save({"prototypes": torch.from_numpy(prototypes)}, tmp_path / "p.pt")
    for file in ("p.npy", "p.pt"):
        method = make_method("sadcl", **{"method.prototypes_file": str(tmp_path / file)})
        torch.testing.assert_close(method.prototypes.detach(), torch.from_numpy(prototypes))
        torch.testing.assert_close(method.memory[5], torch.from_numpy(prototypes))
        assert method.prototype_ready.all()
    with pytest.raises(ConfigError, match=r"\[4, 16\]"):
        load_prototypes(str(tmp_path / "p.npy"), NUM_CLASSES, 16)


def test_class_prototypes_average_confident_positives():
    class Fixed(torch.nn.Module):
        """Image i's features are i everywhere; logits come with the batch."""

        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Linear(1, 1)

        def forward(self, images):
            values = images[:, 0, 0, 0]
            features = values[:, None, None].expand(-1, 3, 2).clone()
            return {"label_features": features, "logits": images[:, 1, 0, :3]}

    images = torch.zeros(4, 2, 1, 3)
    images[:, 0, 0, 0] = torch.tensor([1.0, 2, 3, 4])
    images[:, 1, 0] = torch.tensor([[5.0, 5, -5], [5, -5, -5], [-5, 5, -5], [5, 5, -5]])
    labels = torch.tensor([[1.0, 1, 1], [1, 1, 0], [0, 1, 0], [0, 0, 0]])
    loader = [
        {"image": images[:2], "labels": labels[:2]},
        {"image": images[2:], "labels": labels[2:]},
    ]
    prototypes = class_prototypes(Fixed(), loader, threshold=0.85)
    # class 0: confident positives are images 1 and 2; class 1: images 1 and 3 (image 2 is not
    # confident); class 2: no confident positive, so the mean of all its positives (image 1).
    torch.testing.assert_close(prototypes[:, 0], torch.tensor([1.5, 2.0, 1.0]))


@pytest.mark.parametrize(
    "preset", ["q2l-quick", "mulcon-quick", "sadcl-quick", "q2l-coco", "mulcon-coco", "sadcl-coco"]
)
def test_presets_load(preset):
    config = load_config(preset)
    assert config.model.method == preset.split("-")[0]


def test_sadcl_trains_with_the_engine_and_resumes_its_state(tmp_path):
    overrides = {
        **TINY,
        **SMALL["sadcl"],
        "model.method": "sadcl",
        "data.workers": 0,
        "run.epochs": 1,
        "run.out_dir": str(tmp_path),
        "run.progress": False,
        "run.device": "cpu",
        "run.amp": "off",
        "run.ema": 0.9,
        "run.channels_last": False,  # slow BatchNorm on the CPU
    }
    config = load_config(None, overrides)
    train, val = (
        ToyDataset(24, 32, seed=0, num_classes=NUM_CLASSES),
        ToyDataset(12, 32, seed=1, num_classes=NUM_CLASSES),
    )
    summary = fit(config, train_dataset=train, val_dataset=val)
    assert summary["best_map"] > 0
    checkpoint = load_checkpoint(tmp_path / "checkpoint_last.pt")
    assert checkpoint["model"]["prototype_ready"].any()
    assert checkpoint["model"]["memory"].shape == (6, NUM_CLASSES, 32)


def test_a_stage_two_run_loads_and_resumes_after_its_stage_one_files_are_gone(tmp_path):
    stage_one = tmp_path / "q2l.pt"
    torch.save({"model": make_method("q2l", seed=3).state_dict(), "ema": None}, stage_one)
    prototypes = tmp_path / "prototypes.npy"
    np.save(prototypes, np.zeros((NUM_CLASSES, 32), np.float32))
    overrides = {
        **TINY,
        **SMALL["sadcl"],
        "model.method": "sadcl",
        "method.init_from": str(stage_one),
        "method.prototypes_file": str(prototypes),
        "data.workers": 0,
        "run.epochs": 1,
        "run.out_dir": str(tmp_path / "run"),
        "run.progress": False,
        "run.device": "cpu",
        "run.amp": "off",
        "run.channels_last": False,
    }
    train, val = (
        ToyDataset(12, 32, seed=0, num_classes=NUM_CLASSES),
        ToyDataset(6, 32, seed=1, num_classes=NUM_CLASSES),
    )
    first = fit(load_config(None, overrides), train_dataset=train, val_dataset=val)
    stage_one.unlink()
    prototypes.unlink()

    method, checkpoint = load_method(tmp_path / "run" / "checkpoint_last.pt")
    torch.testing.assert_close(method.prototypes, checkpoint["model"]["prototypes"])
    # Resuming the finished run rebuilds the method without reading the deleted files, restores
    # its state and has nothing left to train.
    resumed = fit(load_config(None, overrides), resume=True, train_dataset=train, val_dataset=val)
    assert resumed["best_map"] == first["best_map"]
    assert resumed["steps"] == first["steps"] == 2
