"""SALGL: co-occurrence counts, conditional probabilities, the label graph, the GGNN, the scene
regularisers, scene-recovery metrics, the method's state and a few training steps."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from mlcl.config import load_config, with_overrides
from mlcl.engine import load_checkpoint, save_checkpoint
from mlcl.losses.scene import batch_entropy_gap, sample_entropy
from mlcl.methods import build_method, method_options
from mlcl.models.bilinear_attention import LowRankBilinearAttention
from mlcl.models.ggnn import GatedGraphNetwork
from mlcl.models.scene_graph import (
    SceneCooccurrence,
    conditional_probabilities,
    cooccurrence_increment,
    mix_label_graphs,
    sine_position_encoding,
)
from mlcl.scene_metrics import contingency_table, normalized_mutual_info, purity, usage_entropy

NUM_CLASSES, NUM_SCENES = 7, 3
# A tiny SALGL: timm's 96-channel test ResNet at 64 px (2 × 2 tokens), small attention.
TINY = {
    "model.method": "salgl",
    "model.backbone": "test_resnet",
    "method.num_scenes": NUM_SCENES,
    "method.embedding_dim": 16,
    "method.attention_dim": 32,
    "method.encoder_ff_dim": 64,
    "method.encoder_dropout": 0.0,
}


def _toy_batch(size: int = 12, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    labels = (torch.rand(size, NUM_CLASSES, generator=generator) < 0.4).float()
    scene_probs = torch.rand(size, NUM_SCENES, generator=generator).softmax(dim=1)
    return scene_probs, labels


def _tiny_method(**overrides):
    config = load_config(None, TINY | overrides)
    torch.manual_seed(0)
    return build_method(config, num_classes=NUM_CLASSES, num_train_images=16)


# ----------------------------------------------------------------- co-occurrence statistics


@pytest.mark.parametrize("soft", [False, True])
def test_cooccurrence_increment_matches_a_loop_over_images(soft):
    scene_probs, labels = _toy_batch()
    expected = torch.zeros(NUM_SCENES, NUM_CLASSES, NUM_CLASSES, dtype=torch.float64)
    for q, y in zip(scene_probs.double(), labels.double()):
        for k in range(NUM_SCENES):
            weight = q[k] if soft else float(k == int(q.argmax()))
            for i in range(NUM_CLASSES):
                for j in range(NUM_CLASSES):
                    expected[k, i, j] += weight * y[i] * y[j]
    torch.testing.assert_close(cooccurrence_increment(scene_probs, labels, soft), expected)


def test_hard_counts_are_the_cooccurrence_of_each_scenes_images():
    scene_probs, labels = _toy_batch(size=30)
    counts = cooccurrence_increment(scene_probs, labels, soft=False)
    scenes = scene_probs.argmax(dim=1)
    for k in range(NUM_SCENES):
        torch.testing.assert_close(
            counts[k], (labels[scenes == k].T @ labels[scenes == k]).double()
        )


def test_conditional_probabilities_match_the_definition():
    counts = cooccurrence_increment(*_toy_batch(size=40), soft=True)
    counts[1, 2] = counts[1, :, 2] = 0  # label 2 never seen in scene 1
    raw = conditional_probabilities(counts, ignore_self=False, normalize=False)
    for k in range(NUM_SCENES):
        for i in range(NUM_CLASSES):
            for j in range(NUM_CLASSES):
                seen = counts[k, i, i] > 0
                expected = counts[k, j, i] / counts[k, i, i] if seen else 0.0
                assert raw[k, i, j].item() == pytest.approx(float(expected))
    assert torch.isfinite(raw).all() and (raw[1, 2] == 0).all()
    normalised = conditional_probabilities(counts, ignore_self=True, normalize=True)
    assert (normalised.diagonal(dim1=1, dim2=2) == 0).all()
    row_sums = normalised.sum(dim=-1)
    torch.testing.assert_close(row_sums[0], torch.ones(NUM_CLASSES, dtype=torch.float64))
    assert row_sums[1, 2] == 0  # an unseen label's row stays empty, not NaN
    without_self = raw * (1 - torch.eye(NUM_CLASSES, dtype=raw.dtype))
    torch.testing.assert_close(
        normalised[0], without_self[0] / without_self[0].sum(1, keepdim=True)
    )


def test_zero_counts_give_an_empty_graph():
    graphs = conditional_probabilities(torch.zeros(NUM_SCENES, NUM_CLASSES, NUM_CLASSES))
    assert torch.isfinite(graphs).all() and (graphs == 0).all()


def test_soft_graph_is_the_scene_mixture_and_hard_graph_the_likeliest_scenes():
    scene_probs, _ = _toy_batch(size=5)
    scene_graphs = torch.rand(NUM_SCENES, NUM_CLASSES, NUM_CLASSES)
    soft = mix_label_graphs(scene_probs, scene_graphs, soft=True)
    hard = mix_label_graphs(scene_probs, scene_graphs, soft=False)
    for b in range(5):
        mixture = sum(scene_probs[b, k] * scene_graphs[k] for k in range(NUM_SCENES))
        torch.testing.assert_close(soft[b], mixture)
        torch.testing.assert_close(hard[b], scene_graphs[scene_probs[b].argmax()])
    one_hot = torch.nn.functional.one_hot(scene_probs.argmax(1), NUM_SCENES).float()
    torch.testing.assert_close(mix_label_graphs(one_hot, scene_graphs, soft=True), hard)


def test_scene_cooccurrence_module_builds_row_stochastic_graphs():
    module = SceneCooccurrence(NUM_SCENES, NUM_CLASSES)
    scene_probs, labels = _toy_batch(size=60)
    module.add_(cooccurrence_increment(scene_probs, labels))
    graphs = module(scene_probs, soft=True)  # [B, C, C]
    assert graphs.shape == (60, NUM_CLASSES, NUM_CLASSES) and graphs.dtype == torch.float32
    seen = module.counts.diagonal(dim1=1, dim2=2) > 0  # [K, C]
    expected_rows = (scene_probs @ seen.float()).unsqueeze(-1)  # mass of scenes where i was seen
    torch.testing.assert_close(graphs.sum(-1, keepdim=True), expected_rows)


# ----------------------------------------------------------------- graph and attention layers


def test_ggnn_one_step_matches_its_equations():
    torch.manual_seed(0)
    layer = GatedGraphNetwork(dim=8, steps=1)
    nodes, adjacency = torch.randn(2, 5, 8), torch.rand(2, 5, 5)
    messages = torch.cat([adjacency @ nodes, adjacency.transpose(1, 2) @ nodes], dim=-1)
    z = torch.sigmoid(layer.message_update(messages) + nodes @ layer.state_update.weight.T)
    r = torch.sigmoid(layer.message_reset(messages) + nodes @ layer.state_reset.weight.T)
    candidate = torch.tanh(
        layer.message_candidate(messages) + (r * nodes) @ layer.state_candidate.weight.T
    )
    torch.testing.assert_close(layer(nodes, adjacency), (1 - z) * nodes + z * candidate)


def test_ggnn_shapes_gradients_and_per_image_graphs():
    torch.manual_seed(0)
    layer = GatedGraphNetwork(dim=8, steps=3)
    nodes = torch.randn(3, 5, 8, requires_grad=True)
    adjacency = torch.rand(3, 5, 5)
    out = layer(nodes, adjacency)
    assert out.shape == (3, 5, 8)
    out.square().sum().backward()
    assert nodes.grad is not None and nodes.grad.abs().sum() > 0
    for name, param in layer.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    # Each image is propagated over its own graph only.
    torch.testing.assert_close(out[1:2], layer(nodes[1:2], adjacency[1:2]))
    # One shared [C, C] graph is the same as that graph repeated for every image.
    shared = adjacency[0]
    torch.testing.assert_close(layer(nodes, shared), layer(nodes, shared.expand(3, 5, 5)))


def test_ggnn_messages_follow_the_edges():
    torch.manual_seed(0)
    layer = GatedGraphNetwork(dim=4, steps=1)
    nodes = torch.randn(1, 3, 4)
    isolated = torch.zeros(1, 3, 3)
    changed = nodes.clone()
    changed[0, 2] += 5.0  # node 2 is connected to nothing: the others must not notice
    torch.testing.assert_close(layer(nodes, isolated)[0, :2], layer(changed, isolated)[0, :2])
    linked = isolated.clone()
    linked[0, 0, 2] = 1.0  # now node 0 hears node 2
    assert not torch.allclose(layer(nodes, linked)[0, 0], layer(changed, linked)[0, 0])


def test_bilinear_attention_pools_a_convex_combination_of_tokens():
    torch.manual_seed(0)
    attention = LowRankBilinearAttention(feature_dim=6, embedding_dim=4, attention_dim=10)
    tokens, embeddings = torch.randn(2, 9, 6), torch.randn(5, 4)
    label_features, maps = attention(tokens, embeddings)
    assert label_features.shape == (2, 5, 6) and maps.shape == (2, 5, 9)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 5))
    torch.testing.assert_close(label_features[1, 3], (maps[1, 3, :, None] * tokens[1]).sum(0))


def test_sine_position_encoding_shape_and_distinct_positions():
    encoding = sine_position_encoding(3, 4, 16)
    assert encoding.shape == (12, 16)
    assert torch.cdist(encoding, encoding).add(torch.eye(12)).min() > 0
    with pytest.raises(ValueError, match="divisible by 4"):
        sine_position_encoding(3, 4, 6)


# ----------------------------------------------------------------- scene regularisers


def test_entropies_at_their_extremes():
    confident = torch.full((4, NUM_SCENES), -1e4)
    confident[torch.arange(4), torch.tensor([0, 1, 2, 0])] = 0.0
    assert sample_entropy(confident).item() == pytest.approx(0.0, abs=1e-6)
    uniform = torch.zeros(4, NUM_SCENES)
    assert sample_entropy(uniform).item() == pytest.approx(math.log(NUM_SCENES))
    assert batch_entropy_gap(uniform).item() == pytest.approx(0.0, abs=1e-4)
    collapsed = torch.full((4, NUM_SCENES), -1e4)
    collapsed[:, 1] = 0.0
    assert batch_entropy_gap(collapsed, scale=1.0).item() == pytest.approx(math.log(NUM_SCENES))


def _optimise_scenes(batch_weight: float) -> torch.Tensor:
    """Scene logits of 60 images that all lean slightly to scene 0, optimised for the scene
    regularisers alone; returns the final assignments."""
    generator = torch.Generator().manual_seed(0)
    logits = 0.1 * torch.randn(60, 4, generator=generator)
    logits[:, 0] += 0.5
    logits.requires_grad_(True)
    optimiser = torch.optim.Adam([logits], lr=0.1)
    for _ in range(60):
        loss = sample_entropy(logits) + batch_weight * batch_entropy_gap(logits)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return logits.detach().argmax(dim=1)


def test_batch_entropy_prevents_scene_collapse():
    collapsed = _optimise_scenes(batch_weight=0.0)
    spread = _optimise_scenes(batch_weight=1.0)
    assert usage_entropy(collapsed) < 0.2  # sample entropy alone: (nearly) one scene
    assert usage_entropy(spread) > 0.95 * math.log(4)  # with it: all four, evenly
    assert torch.bincount(spread, minlength=4).min() >= 10


# ----------------------------------------------------------------- scene recovery metrics


def test_purity_and_nmi_on_hand_cases():
    true = torch.tensor([0, 0, 1, 1, 2, 2])
    renamed = torch.tensor([2, 2, 0, 0, 1, 1])
    assert purity(renamed, true) == 1.0
    assert normalized_mutual_info(renamed, true) == pytest.approx(1.0)
    # Found clusters independent of the true ones: no information.
    assert normalized_mutual_info(torch.tensor([0, 1, 0, 1]), torch.tensor([0, 0, 1, 1])) == 0.0
    # Majorities: cluster 0 holds {0, 1} (1 right), cluster 1 holds {1, 1} (2 right).
    assert purity(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1])) == 0.75
    # Everything in one cluster: purity is the largest true class's share, NMI 0.
    assert purity(torch.zeros(6), true) == pytest.approx(1 / 3)
    assert normalized_mutual_info(torch.zeros(6), true) == 0.0
    assert normalized_mutual_info(torch.zeros(6), torch.zeros(6)) == 1.0
    table = contingency_table(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1]))
    torch.testing.assert_close(table, torch.tensor([[1.0, 1.0], [0.0, 2.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match="one id per image"):
        purity(torch.zeros(3), torch.zeros(4))


def test_nmi_and_purity_against_scikit_learn():
    from sklearn import metrics  # a test oracle only: the package does not depend on it

    generator = torch.Generator().manual_seed(0)
    true = torch.randint(0, 5, (300,), generator=generator)
    found = torch.where(torch.rand(300, generator=generator) < 0.6, (true + 2) % 5, 0)
    found = torch.where(torch.rand(300, generator=generator) < 0.2, 5, found)  # a sixth cluster
    expected_nmi = metrics.normalized_mutual_info_score(true.numpy(), found.numpy())
    assert normalized_mutual_info(found, true) == pytest.approx(expected_nmi, abs=1e-10)
    table = metrics.cluster.contingency_matrix(true.numpy(), found.numpy())  # [true, found]
    assert purity(found, true) == pytest.approx(table.max(axis=0).sum() / 300)


def test_usage_entropy():
    assert usage_entropy(torch.tensor([0, 1, 2, 3])) == pytest.approx(math.log(4))
    assert usage_entropy(torch.tensor([5, 5, 5])) == 0.0


# ----------------------------------------------------------------- the method


class _Split:
    """A data set's metadata as ``extra_metrics`` reads it."""

    def __init__(self, scene_ids):
        self.scene_ids = scene_ids


def test_extra_metrics_report_scene_recovery_when_true_scenes_are_known():
    method = _tiny_method()
    scene_probs = torch.eye(NUM_SCENES)[[0, 0, 1, 1, 2, 2]]
    outputs = {"logits": torch.zeros(6, NUM_CLASSES), "scene_probs": scene_probs}
    metrics = method.extra_metrics(outputs, _Split(torch.tensor([1, 1, 2, 2, 0, 0])))
    assert metrics == pytest.approx(
        {"scene_usage_entropy": math.log(3), "scene_nmi": 1.0, "scene_purity": 1.0}
    )
    assert method.extra_metrics(outputs, _Split(None)).keys() == {"scene_usage_entropy"}


def _image_batch(size: int = 6, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    labels = (torch.rand(size, NUM_CLASSES, generator=generator) < 0.4).float()
    return {
        "image": torch.randn(size, 3, 64, 64, generator=generator),
        "labels": labels,
        "observed": torch.ones(size, NUM_CLASSES, dtype=torch.bool),
        "index": torch.arange(size),
    }


@pytest.mark.parametrize("feature_dim", [0, 32])  # the backbone's 96 channels, or projected
def test_forward_logs_every_term_and_inference_returns_scene_distributions(feature_dim):
    method = _tiny_method(**{"method.feature_dim": feature_dim})
    batch = _image_batch()
    outputs = method(batch)
    for name in ("loss", "asl", "sample_entropy", "batch_entropy"):
        assert outputs[name].ndim == 0 and torch.isfinite(outputs[name]), name
    total = outputs["asl"] + outputs["sample_entropy"] + outputs["batch_entropy"]
    torch.testing.assert_close(outputs["loss"].detach(), total)
    method.eval()
    with torch.no_grad():
        inferred = method.inference(batch["image"])
    assert inferred["logits"].shape == (6, NUM_CLASSES)
    torch.testing.assert_close(inferred["scene_probs"].sum(1), torch.ones(6))


@pytest.mark.parametrize("soft", [False, True])
def test_after_step_counts_the_batch_once_in_its_scenes(soft):
    method = _tiny_method(**{"method.soft": soft})
    batch = _image_batch()
    outputs = method(batch)
    method.after_step(batch, outputs)
    method.after_step(batch, outputs)
    expected = 2 * cooccurrence_increment(outputs["scene_probs"], batch["labels"], soft)
    torch.testing.assert_close(method.model.cooccurrence.counts, expected)


def test_counts_travel_through_a_checkpoint(tmp_path):
    method = _tiny_method()
    batch = _image_batch()
    method.after_step(batch, method(batch))
    assert "model.cooccurrence.counts" in method.state_dict()
    save_checkpoint({"format": 1, "model": method.state_dict()}, tmp_path / "salgl.pt")
    restored = _tiny_method()
    restored.load_state_dict(load_checkpoint(tmp_path / "salgl.pt")["model"])
    torch.testing.assert_close(restored.model.cooccurrence.counts, method.model.cooccurrence.counts)
    method.eval()
    restored.eval()
    with torch.no_grad():
        torch.testing.assert_close(restored.predict(batch["image"]), method.predict(batch["image"]))


def test_a_few_steps_on_a_tiny_batch_reduce_the_loss():
    method = _tiny_method(**{"method.soft": True})
    batch = _image_batch(size=8)
    optimiser = torch.optim.AdamW(method.parameters(), lr=1e-3)
    losses = []
    for _ in range(12):
        outputs = method(batch)
        optimiser.zero_grad()
        outputs["loss"].backward()
        optimiser.step()
        method.after_step(batch, outputs)
        losses.append(outputs["loss"].item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_presets_load_and_the_quick_one_has_a_scene_per_true_scene():
    from mlcl.data.synthetic import SCENES

    assert method_options(load_config("salgl-quick")).num_scenes == len(SCENES)
    coco, nuswide = load_config("salgl-coco"), load_config("salgl-nuswide")
    options = method_options(coco)
    assert options.num_scenes == 6 and coco.model.backbone == "resnet101"
    assert (options.gamma_neg, options.clip) == (2.0, 0.0)
    assert nuswide.data.dataset == "nuswide" and method_options(nuswide) == options


def test_the_voc_preset_runs_on_a_vision_transformers_patch_tokens():
    voc = load_config("salgl-voc2007")
    assert (voc.model.backbone, voc.data.image_size) == ("vit_large_patch16_224", 224)
    # The same recipe with timm's smallest ViT (its patch tokens form a 14 × 14 map at 224 px).
    config = with_overrides(voc, TINY | {"model.backbone": "vit_tiny_patch16_224"})
    config.model.pretrained = False
    method = build_method(config, num_classes=NUM_CLASSES, num_train_images=4)
    batch = _image_batch(size=2) | {"image": torch.randn(2, 3, 224, 224)}
    outputs = method(batch)
    assert torch.isfinite(outputs["loss"])
    assert outputs["scene_probs"].shape == (2, NUM_SCENES)


# ----------------------------------------------------------------- two processes


def _ddp_worker(rank: int, port: int, results: dict) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        method = _tiny_method()
        scene_probs, labels = _toy_batch(size=12)
        half = slice(6 * rank, 6 * rank + 6)  # each process sees half of the batch
        method.after_step({"labels": labels[half]}, {"scene_probs": scene_probs[half]})
        results[rank] = method.model.cooccurrence.counts.clone()
    finally:
        dist.destroy_process_group()


def test_counts_are_summed_over_processes():
    with mp.Manager() as manager:
        results = manager.dict()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        mp.spawn(_ddp_worker, args=(port, results), nprocs=2, join=True)
        counts = dict(results)
    expected = cooccurrence_increment(*_toy_batch(size=12))
    torch.testing.assert_close(counts[0], expected)
    torch.testing.assert_close(counts[1], expected)


def test_no_graph_ablation_classifies_the_unpropagated_label_features():
    """graph_steps=0 keeps the head's size but bypasses the graph: the logits no longer depend
    on the scene's co-occurrence counts, which they do with the graph."""
    batch = _image_batch()
    for steps, depends_on_counts in ((3, True), (0, False)):
        method = _tiny_method(**{"method.graph_steps": steps}).eval()
        assert (method.model.graph is None) == (steps == 0)
        with torch.no_grad():
            before = method.model(batch["image"])["logits"]
            method.model.cooccurrence.counts.uniform_(0, 5)
            after = method.model(batch["image"])["logits"]
        assert (not torch.allclose(before, after)) == depends_on_counts, steps
