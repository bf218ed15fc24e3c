"""Scob: CAMs, the masked transformer, the contrastive loss, the E-step state, training."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from mlcl.config import load_config
from mlcl.data import build_dataset, ensure_synthetic
from mlcl.engine import fit, load_checkpoint, read_metrics
from mlcl.losses import semantic_contrastive_loss
from mlcl.methods import build_method
from mlcl.methods.scob import Scob
from mlcl.methods.spml import label_correlation
from mlcl.models.cam import cam_to_masks, class_activation_map, grad_cam
from mlcl.models.masked_transformer import MaskedTokenEncoder, momentum_update
from mlcl.models.transformer_spec import TransformerSpec

# --------------------------------------------------------------------------- CAM


def _slow_cam(features, weight, cls):
    """Σ_k W_ck A_k at every position, ReLU, min–max to [0, 1]: one image, loops."""
    channels, height, width = features.shape
    cam = torch.zeros(height, width, dtype=features.dtype)
    for i in range(height):
        for j in range(width):
            total = sum(weight[cls, k] * features[k, i, j] for k in range(channels))
            cam[i, j] = max(total, 0.0)
    return (cam - cam.min()) / (cam.max() - cam.min() + 1e-7)


def test_cam_matches_a_slow_reference():
    torch.manual_seed(0)
    features, weight = torch.randn(3, 4, 5, 6), torch.randn(7, 4)
    classes = torch.tensor([0, 6, 3])
    cam = class_activation_map(features, weight, classes)
    for b in range(3):
        torch.testing.assert_close(cam[b], _slow_cam(features[b], weight, classes[b].item()))
    assert cam.amin() == 0 and (cam.amax(dim=(1, 2)) > 0.999).all()


def test_grad_cam_equals_cam_for_global_pooling_and_a_linear_head():
    torch.manual_seed(1)
    features = torch.randn(4, 8, 5, 5)
    classifier = nn.Linear(8, 6)
    classes = torch.tensor([1, 0, 5, 2])

    def head(x):
        return classifier(x.mean(dim=(2, 3)))

    gradient_map = grad_cam(features, head, classes)
    torch.testing.assert_close(
        gradient_map, class_activation_map(features, classifier.weight.detach(), classes)
    )
    assert classifier.weight.grad is None  # only the features' gradient was taken


def test_cam_to_masks_resizes_crops_corners_and_thresholds():
    cam = torch.zeros(1, 4, 4)
    cam[0, :2, :2] = 1.0  # top-left quarter
    fine, coarse = cam_to_masks(cam, [(4, 4), (2, 2)], image_size=(32, 32), threshold=0.5)
    expected_fine = torch.zeros(1, 4, 4, dtype=torch.bool)
    expected_fine[0, :2, :2] = True
    expected_fine[0, 0, 0] = False  # a corner cell
    assert torch.equal(fine, expected_fine)
    assert not coarse.any()  # on a 2 × 2 grid every cell is a corner
    kept = cam_to_masks(cam, [(2, 2)], (32, 32), crop_corners=False)[0]
    assert kept[0].tolist() == [[True, False], [False, False]]


# --------------------------------------------------------------------------- masked transformer


def _encoder():
    torch.manual_seed(0)
    spec = TransformerSpec(dim=16, heads=4, ff_dim=32)
    return MaskedTokenEncoder(in_channels=6, spec=spec, num_layers=2).eval()


def test_masked_tokens_do_not_influence_the_object_feature():
    encoder = _encoder()
    features = torch.randn(2, 6, 3, 4)
    padding = torch.zeros(2, 3, 4, dtype=torch.bool)
    padding[0, :, 2:] = True  # image 0: the right half is outside the object
    padding[1, 0, :] = True
    changed = features.clone()
    changed[padding[:, None].expand_as(features)] = 100 * torch.randn(int(padding.sum()) * 6)
    with torch.no_grad():
        torch.testing.assert_close(encoder(features, padding), encoder(changed, padding))
        assert not torch.allclose(encoder(features), encoder(changed))  # unmasked, it matters


def test_an_all_masked_image_falls_back_to_every_token():
    encoder = _encoder()
    features = torch.randn(2, 6, 3, 3)
    padding = torch.zeros(2, 3, 3, dtype=torch.bool)
    padding[1] = True
    with torch.no_grad():
        out = encoder(features, padding)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out[1], encoder(features[1:])[0])


def test_momentum_update():
    key, online = nn.Linear(3, 2), nn.Linear(3, 2)
    expected = [
        0.9 * k.detach() + 0.1 * o.detach() for k, o in zip(key.parameters(), online.parameters())
    ]
    momentum_update(key, online, 0.9)
    for param, value in zip(key.parameters(), expected):
        torch.testing.assert_close(param.detach(), value)


# --------------------------------------------------------------------------- contrastive loss


def test_semantic_contrastive_loss_matches_a_slow_reference():
    torch.manual_seed(2)
    queries, keys = torch.randn(3, 5), torch.randn(3, 5)
    negatives, negative_classes = torch.randn(4, 5), torch.tensor([0, 1, 2, 2])
    observed = torch.tensor([0, 2, 1])
    correlation = torch.tensor([[1.0, 0.5, 0.2], [0.9, 1.0, 0.0], [0.3, 1.0, 1.0]])
    tau = 0.5
    for hard in (False, True):
        total = 0.0
        for b in range(3):
            cosine = F.cosine_similarity
            logits = [(cosine(queries[b], keys[b], dim=0) + 1) / tau]
            for m in range(4):
                r = correlation[observed[b], negative_classes[m]]
                if hard and r < 1:
                    r = torch.tensor(0.0)
                weight = 1 - r**2
                logits.append(weight * (cosine(queries[b], negatives[m], dim=0) + 1) / tau)
            logits = torch.stack(logits)
            total += -(logits[0] - torch.logsumexp(logits, dim=0))
        actual = semantic_contrastive_loss(
            queries, keys, negatives, negative_classes, observed, correlation, tau, hard
        )
        torch.testing.assert_close(actual, total / 3)


# --------------------------------------------------------------------------- the method


def _scob_config(out_dir, root=None, **overrides):
    values = {
        "data.image_size": 48,
        "data.batch_size": 8,
        "run.out_dir": str(out_dir),
        "run.epochs": 1,
        "run.progress": False,
        "method.dim": 32,
        "method.num_heads": 2,
        "method.ff_dim": 32,
    }
    if root is not None:
        values |= {
            "data.root": str(root),
            "data.synthetic_train": 32,
            "data.synthetic_val": 16,
            "data.synthetic_image_size": 48,
        }
    return load_config("scob-quick", values | overrides)


def _batch(num_classes=24, size=8, image_size=48, seed=0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.zeros(size, num_classes)
    labels[torch.arange(size), torch.randint(num_classes, (size,), generator=generator)] = 1
    return {
        "image": torch.randn(size, 3, image_size, image_size, generator=generator),
        "labels": labels,
        "observed": labels.bool(),
        "index": torch.arange(size) + size * seed,
    }


def _train_steps(method, batches):
    """What the engine does per iteration, without it: every phase, then after_step."""
    optimizers = {
        phase: torch.optim.AdamW(method.param_groups(phase, 0.0), lr=1e-3)
        for phase in method.phases
    }
    history = []
    for batch in batches:
        merged = {}
        for phase in method.phases:
            outputs = method(batch, phase=phase)
            optimizers[phase].zero_grad()
            outputs["loss"].backward()
            optimizers[phase].step()
            merged |= outputs
        method.after_step(batch, merged)
        history.append({name: value.item() for name, value in merged.items() if value.ndim == 0})
    return history


def test_correlation_is_recomputed_from_the_estimates_at_each_epoch(tmp_path):
    method = build_method(_scob_config(tmp_path), num_classes=3, num_train_images=4)
    truth = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 1, 0]], dtype=torch.float32)
    with torch.no_grad():
        method.label_estimator.logits.copy_(20 * (2 * truth - 1))  # σ ≈ the binary labels
    method.on_epoch_start(0)
    torch.testing.assert_close(method.correlation, label_correlation(truth), atol=1e-6, rtol=0)


def test_bank_keeps_the_most_confident_objects_of_each_class(tmp_path):
    method = build_method(
        _scob_config(tmp_path, **{"method.dim": 4, "method.num_heads": 1}),
        num_classes=3,
        num_train_images=10,
    )
    method.on_epoch_start(0)
    features = torch.eye(4)[[0, 1, 2, 3]] + torch.arange(4.0)[:, None]
    method.update_bank(
        torch.tensor([0, 0, 0, 2]),
        torch.tensor([0.2, 0.9, 0.5, 0.4]),
        torch.tensor([1, 2, 3, 4]),
        features,
    )
    assert method.bank_images.tolist() == [[2, 3], [-1, -1], [4, -1]]
    # Image 3 comes back more confident: it replaces its old entry instead of doubling up.
    method.update_bank(torch.tensor([0]), torch.tensor([0.95]), torch.tensor([3]), features[:1])
    assert method.bank_images[0].tolist() == [3, 2]
    negatives, classes = method.bank_negatives()  # the top 1 of each filled class
    assert classes.tolist() == [0, 2]
    torch.testing.assert_close(negatives, torch.stack([features[0], features[3]]))
    method.on_epoch_start(1)
    assert (method.bank_images == -1).all() and len(method.bank_negatives()[0]) == 0


def test_a_few_steps_train_both_phases_and_the_state_round_trips(tmp_path):
    config = _scob_config(tmp_path)
    torch.manual_seed(0)
    method = build_method(config, num_classes=24, num_train_images=32)
    method.on_epoch_start(0)
    key_before = [p.detach().clone() for p in method.model.key_encoder.parameters()]
    batch = _batch()
    history = _train_steps(method, [batch] * 4)
    assert history[-1]["role"] < history[0]["role"]
    assert all(torch.isfinite(torch.tensor(h["contrastive"])) for h in history)
    assert history[0]["contrastive"] == pytest.approx(0.0, abs=1e-6)  # empty bank: no negative
    assert history[-1]["contrastive"] > 0  # the bank now holds negatives
    assert (method.bank_images >= 0).sum() > 0
    moved = [
        not torch.equal(a, b) for a, b in zip(key_before, method.model.key_encoder.parameters())
    ]
    assert any(moved)

    copy = build_method(config, num_classes=24, num_train_images=32)
    copy.load_state_dict(method.state_dict())
    state = method.state_dict()
    for name in (
        "label_estimator.logits",
        "correlation",
        "bank_features",
        "bank_images",
        "bank_confidence",
    ):
        torch.testing.assert_close(copy.state_dict()[name], state[name], rtol=0, atol=0)
    key_names = [name for name in state if name.startswith("model.key_encoder.")]
    assert key_names
    for name in key_names:
        torch.testing.assert_close(copy.state_dict()[name], state[name], rtol=0, atol=0)
    images = batch["image"]
    copy.eval(), method.eval()
    with torch.no_grad():
        torch.testing.assert_close(copy.predict(images), method.predict(images))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return ensure_synthetic(
        tmp_path_factory.mktemp("synthetic"), num_train=32, num_val=16, image_size=48
    )


def test_fit_runs_two_phases_in_the_single_positive_setting(tiny_data, tmp_path, monkeypatch):
    seen = []
    forward = Scob.forward

    def spy(self, batch, phase="classify"):
        seen.append((batch["index"].clone(), batch["labels"].clone()))
        return forward(self, batch, phase)

    monkeypatch.setattr(Scob, "forward", spy)
    summary = fit(_scob_config(tmp_path, tiny_data, **{"run.epochs": 2, "data.limit_train": 16}))
    assert summary["steps"] == 4
    checkpoint = load_checkpoint(tmp_path / "checkpoint_last.pt")
    assert set(checkpoint["optimizers"]) == {"classify", "contrast"}
    for phase in ("classify", "contrast"):
        steps = {float(s["step"]) for s in checkpoint["optimizers"][phase]["state"].values()}
        assert steps == {4.0}, phase
    record = read_metrics(tmp_path)[-1]
    assert {"train_classify_role", "train_contrast_contrastive", "mAP"} <= record.keys()

    train = build_dataset("synthetic", tiny_data, "train", labels="single_positive")
    assert (train.full_labels.sum(1) > 1).any()
    for index, labels in seen:  # both phases: only the observed positive
        torch.testing.assert_close(labels, train.labels[index])
    # The estimator holds the observed positives of every image trained on.
    estimates = torch.sigmoid(checkpoint["model"]["label_estimator.logits"])
    trained = torch.cat([index for index, _ in seen]).unique()
    observed = train.labels[trained].bool()
    torch.testing.assert_close(estimates[trained][observed], torch.full((len(trained),), 0.995))


# --------------------------------------------------------------------------- two processes


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.manual_seed(0)  # the same initial weights and estimates on both ranks
    method = build_method(_scob_config(out_dir), num_classes=24, num_train_images=40)
    method.on_epoch_start(0)
    model = DistributedDataParallel(method, broadcast_buffers=False, find_unused_parameters=True)
    optimizers = {
        phase: torch.optim.AdamW(method.param_groups(phase, 0.0), lr=1e-3)
        for phase in method.phases
    }
    for step in range(2):
        batch = _batch(seed=2 * step + rank)  # each rank its own images: 8·seed + 0…7
        merged = {}
        for phase in method.phases:
            outputs = model(batch, phase=phase)
            optimizers[phase].zero_grad()
            outputs["loss"].backward()
            optimizers[phase].step()
            merged |= outputs
        method.after_step(batch, merged)
    method.on_epoch_start(1)
    torch.save(method.state_dict(), f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_two_ranks_end_with_the_same_estimates_bank_and_key_encoder(tmp_path):
    torch.manual_seed(0)
    initial = build_method(_scob_config(tmp_path), num_classes=24, num_train_images=40)
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    states = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for name, value in states[0].items():
        if "running_" in name or "num_batches_tracked" in name:
            continue  # BatchNorm statistics are per rank (run.sync_bn on GPUs)
        torch.testing.assert_close(states[1][name], value, rtol=0, atol=0, msg=name)
    # Rank 0 applied rank 1's estimator updates too: the rows of rank 1's first batch moved.
    rank1_rows = _batch(seed=1)["index"]
    before = initial.label_estimator.logits.detach()[rank1_rows]
    after = states[0]["label_estimator.logits"][rank1_rows]
    assert not torch.allclose(after, before)
    untouched = torch.arange(32, 40)  # in no batch of either rank
    torch.testing.assert_close(
        states[0]["label_estimator.logits"][untouched],
        initial.label_estimator.logits.detach()[untouched],
    )
