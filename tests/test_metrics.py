import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from mlcl.metrics import (
    MultiLabelMetrics,
    average_precision,
    mean_average_precision,
    multilabel_metrics,
    threshold_metrics,
    top_k_metrics,
)


def random_problem(num_images=200, num_classes=7, seed=0, decimals=1):
    """Scores correlated with the targets, rounded so that many of them tie."""
    generator = torch.Generator().manual_seed(seed)
    targets = torch.rand(num_images, num_classes, generator=generator) < 0.3
    noise = torch.rand(num_images, num_classes, generator=generator)
    scores = torch.round((0.4 * targets + noise) * 10**decimals) / 10**decimals
    return scores, targets


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("decimals", [1, 4])
def test_average_precision_matches_sklearn_with_ties(seed, decimals):
    scores, targets = random_problem(seed=seed, decimals=decimals)
    ap = average_precision(scores, targets)
    expected = [
        average_precision_score(targets[:, c].numpy(), scores[:, c].numpy())
        for c in range(scores.shape[1])
    ]
    np.testing.assert_allclose(ap.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_ties_do_not_depend_on_row_order():
    scores, targets = random_problem(seed=3)
    permutation = torch.randperm(scores.shape[0], generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        average_precision(scores, targets),
        average_precision(scores[permutation], targets[permutation]),
    )


def test_all_tied_scores_give_the_positive_rate():
    targets = torch.tensor([[1], [0], [0], [1], [0]], dtype=torch.bool)
    scores = torch.zeros(5, 1)
    assert average_precision(scores, targets).item() == pytest.approx(2 / 5)


def test_hand_computed_average_precision():
    # Ranking: pos (0.9), neg (0.8), pos (0.7), neg (0.1): AP = 1/2 · 1 + 1/2 · 2/3.
    scores = torch.tensor([[0.9], [0.8], [0.7], [0.1]])
    targets = torch.tensor([[1.0], [0.0], [1.0], [0.0]])
    assert average_precision(scores, targets).item() == pytest.approx(0.5 + 1 / 3)


def test_class_without_positive_is_nan_and_left_out():
    scores, targets = random_problem(num_classes=4, seed=4)
    targets[:, 2] = False
    ap = average_precision(scores, targets)
    assert math.isnan(ap[2].item())
    assert not torch.isnan(ap[[0, 1, 3]]).any()
    expected = 100 * ap[[0, 1, 3]].mean().item()
    assert mean_average_precision(scores, targets) == pytest.approx(expected)

    metrics = MultiLabelMetrics(num_classes=4, from_logits=False)
    metrics.update(scores, targets)
    results = metrics.compute()
    assert results["num_classes_evaluated"] == 3
    assert results["num_classes_without_positive"] == 1
    assert results["mAP"] == pytest.approx(expected)
    assert math.isnan(results["per_class_ap"][2])


def test_perfect_ranking_is_100():
    generator = torch.Generator().manual_seed(5)
    targets = torch.rand(50, 6, generator=generator) < 0.4
    targets[0] = True  # every class has a positive
    scores = targets.float() * 2 - 1 + 0.1 * torch.rand(50, 6, generator=generator)
    assert mean_average_precision(scores, targets) == pytest.approx(100.0)


def test_invariant_to_monotone_transform():
    scores, targets = random_problem(seed=6)
    transformed = torch.exp(3 * scores) - 7
    torch.testing.assert_close(
        average_precision(scores, targets), average_precision(transformed, targets)
    )


def test_bool_float_and_int_targets_agree():
    scores, targets = random_problem(seed=7)
    ap = average_precision(scores, targets)
    torch.testing.assert_close(average_precision(scores, targets.float()), ap)
    torch.testing.assert_close(average_precision(scores, targets.long()), ap)


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="must both be"):
        average_precision(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="only 0 and 1"):
        average_precision(torch.zeros(2, 2), torch.tensor([[1.0, -1.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="NaN"):
        average_precision(torch.tensor([[math.nan]]), torch.tensor([[1.0]]))
    metrics = MultiLabelMetrics(num_classes=3)
    with pytest.raises(ValueError, match="3 classes"):
        metrics.update(torch.zeros(2, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="before any update"):
        metrics.compute()


# Two classes, four images, probabilities; predicted positive at 0.5:
#   class 0: predictions rows 0, 1, 2; targets rows 0, 3  -> Nc=1, Np=3, Ng=2
#   class 1: predictions none;         targets row 1     -> Nc=0, Np=0, Ng=1
SMALL_SCORES = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.6, 0.3], [0.4, 0.05]])
SMALL_TARGETS = torch.tensor([[1, 0], [0, 1], [0, 0], [1, 0]])


def test_hand_computed_threshold_metrics():
    results = threshold_metrics(SMALL_SCORES, SMALL_TARGETS, threshold=0.5)
    cp = (1 / 3 + 0) / 2  # a class never predicted positive has precision 0
    cr = (1 / 2 + 0) / 2
    op, overall_recall = 1 / 3, 1 / 3
    expected = {
        "CP": cp,
        "CR": cr,
        "CF1": 2 * cp * cr / (cp + cr),
        "OP": op,
        "OR": overall_recall,
        "OF1": 2 * op * overall_recall / (op + overall_recall),
    }
    assert results == pytest.approx({key: 100 * value for key, value in expected.items()})


def test_logits_threshold_equals_probability_threshold():
    scores, targets = random_problem(seed=8, decimals=4)
    logits = torch.logit(scores.clamp(1e-4, 1 - 1e-4).double())
    probabilities = torch.sigmoid(logits)
    for threshold in (0.3, 0.5, 0.8):
        assert threshold_metrics(logits, targets, threshold, from_logits=True) == pytest.approx(
            threshold_metrics(probabilities, targets, threshold)
        )


def test_hand_computed_top3():
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.1], [0.1, 0.2, 0.3, 0.4]])
    targets = torch.tensor([[1, 0, 0, 1], [0, 0, 0, 1]])
    # Predicted: image 0 -> classes 0, 1, 2; image 1 -> classes 1, 2, 3.
    # Nc = [1, 0, 0, 1], Np = [1, 2, 2, 1], Ng = [1, 0, 0, 2]: classes 0 and 3 evaluated.
    results = top_k_metrics(scores, targets, k=3)
    cp, cr = (1 + 1) / 2, (1 + 1 / 2) / 2
    op, overall_recall = 2 / 6, 2 / 3
    assert results["CP_top3"] == pytest.approx(100 * cp)
    assert results["CR_top3"] == pytest.approx(100 * cr)
    assert results["CF1_top3"] == pytest.approx(100 * 2 * cp * cr / (cp + cr))
    assert results["OP_top3"] == pytest.approx(100 * op)
    assert results["OR_top3"] == pytest.approx(100 * overall_recall)
    assert results["OF1_top3"] == pytest.approx(
        100 * 2 * op * overall_recall / (op + overall_recall)
    )


def test_top3_ignores_the_threshold():
    # Every probability below 0.5: nothing is predicted at the threshold, three labels at top-3.
    scores = torch.full((2, 5), 0.1)
    scores[:, 0] = 0.2
    targets = torch.zeros(2, 5, dtype=torch.bool)
    targets[:, 0] = True
    assert threshold_metrics(scores, targets)["OP"] == 0.0
    assert top_k_metrics(scores, targets)["OR_top3"] == pytest.approx(100.0)


def test_streaming_equals_all_at_once():
    scores, targets = random_problem(num_images=103, seed=9)
    logits = scores * 8 - 3
    streamed = MultiLabelMetrics(num_classes=scores.shape[1])
    for start in range(0, 103, 10):
        streamed.update(logits[start : start + 10], targets[start : start + 10].float())
    whole = MultiLabelMetrics(num_classes=scores.shape[1])
    whole.update(logits, targets)
    streamed_results, whole_results = streamed.compute(), whole.compute()
    streamed_ap, whole_ap = streamed_results.pop("per_class_ap"), whole_results.pop("per_class_ap")
    assert streamed_ap == pytest.approx(whole_ap)
    assert streamed_results == pytest.approx(whole_results)
    assert whole_results["mAP"] == pytest.approx(mean_average_precision(scores, targets))
    assert whole_results["num_images"] == 103

    streamed.reset()
    streamed.update(logits[:5], targets[:5])
    assert streamed.compute()["num_images"] == 5


def test_compute_reports_every_key():
    scores, targets = random_problem(seed=10)
    metrics = MultiLabelMetrics(num_classes=scores.shape[1], from_logits=False)
    metrics.update(scores, targets)
    results = metrics.compute()
    names = ["CP", "CR", "CF1", "OP", "OR", "OF1"]
    expected_keys = {"mAP", "per_class_ap", "num_images", "num_classes_evaluated"}
    expected_keys |= {"num_classes_without_positive"} | set(names) | {n + "_top3" for n in names}
    assert set(results) == expected_keys
    for name in names:
        assert 0.0 <= results[name] <= 100.0
        assert 0.0 <= results[name + "_top3"] <= 100.0
    assert results["per_class_ap"] == pytest.approx(100 * average_precision(scores, targets))
    expected = threshold_metrics(scores, targets) | top_k_metrics(scores, targets, k=3)
    assert {name: results[name] for name in expected} == pytest.approx(expected)


def assert_same_results(results: dict, expected: dict) -> None:
    """Equal metrics, ``per_class_ap`` (a list, NaN for a class without positive) included."""
    results, expected = dict(results), dict(expected)
    per_class = results.pop("per_class_ap"), expected.pop("per_class_ap")
    assert per_class[0] == pytest.approx(per_class[1], nan_ok=True)
    assert results == pytest.approx(expected)


def test_metric_in_chunks_equals_the_kernel_on_everything():
    scores, targets = random_problem(num_images=57, seed=11, decimals=2)
    metrics = MultiLabelMetrics(num_classes=scores.shape[1], threshold=0.4, from_logits=False)
    for start in range(0, 57, 8):
        metrics.update(scores[start : start + 8], targets[start : start + 8])
    expected = multilabel_metrics(scores, targets, threshold=0.4, from_logits=False)
    assert_same_results(metrics.compute(), expected)
    assert expected["mAP"] == pytest.approx(mean_average_precision(scores, targets))


def test_indices_count_each_image_once_in_dataset_order():
    # As a DistributedSampler over 2 processes hands them out: rank 0 reads 0, 2, 4, ..., rank 1
    # 1, 3, 5, ..., the last rank pads with image 0 again; gathered rank after rank.
    scores, targets = random_problem(num_images=11, seed=12)
    order = torch.tensor([0, 2, 4, 6, 8, 10, 1, 3, 5, 7, 9, 0])
    metrics = MultiLabelMetrics(num_classes=scores.shape[1], from_logits=False)
    for part in order.split(5):
        metrics.update(scores[part], targets[part], indices=part)
    whole = MultiLabelMetrics(num_classes=scores.shape[1], from_logits=False)
    whole.update(scores, targets)
    assert_same_results(metrics.compute(), whole.compute())
    assert metrics.compute()["num_images"] == 11

    # Mixing batches with and without indices is refused at the batch that breaks the rule.
    for first, second in ((torch.arange(5), None), (None, torch.arange(5, 11))):
        mixed = MultiLabelMetrics(num_classes=scores.shape[1], from_logits=False)
        mixed.update(scores[:5], targets[:5], indices=first)
        with pytest.raises(ValueError, match="every update"):
            mixed.update(scores[5:], targets[5:], indices=second)


def test_reset_forgets_every_batch():
    scores, targets = random_problem(num_images=20, seed=13)
    metrics = MultiLabelMetrics(num_classes=scores.shape[1], from_logits=False)
    metrics.update(scores, targets, indices=torch.arange(20))
    assert metrics.compute()["num_images"] == 20
    metrics.reset()
    with pytest.raises(ValueError, match="before any update"):  # there is nothing to score
        metrics.compute()
    metrics.update(scores[:6], targets[:6])  # without indices, now that none are kept
    assert_same_results(
        metrics.compute(), multilabel_metrics(scores[:6], targets[:6], from_logits=False)
    )
