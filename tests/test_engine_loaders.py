"""Training batches depend only on (seed, epoch): not on the workers, not on where an epoch
starts."""

from __future__ import annotations

import torch

from mlcl.engine.loaders import build_loaders, seed_epoch
from mlcl.engine.process_group import DistributedContext
from tests.test_engine_toys import ToyDataset, toy_config


class RandomlyAugmented(ToyDataset):
    """The toy images plus random noise: an augmentation drawn from torch's generator."""

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = super().__getitem__(index)
        return item | {"image": item["image"] + torch.rand(item["image"].shape)}


def _epoch(workers: int, epoch: int, skip: int = 0, limit: int | None = None):
    config = toy_config("unused", overrides={"data.workers": workers, "data.batch_size": 4})
    dataset = RandomlyAugmented(size=16, image_size=4)
    loader, _ = build_loaders(config, dataset, dataset, DistributedContext(torch.device("cpu")))
    seed_epoch(loader, config.run.seed, epoch, rank=0, skip_batches=skip, max_batches=limit)
    return list(loader)


def _assert_same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b):
        torch.testing.assert_close(a["index"], b["index"], rtol=0, atol=0)
        torch.testing.assert_close(a["image"], b["image"], rtol=0, atol=0)


def test_batches_do_not_depend_on_the_workers():
    _assert_same(_epoch(workers=0, epoch=1), _epoch(workers=2, epoch=1))


def test_each_epoch_has_its_own_order_and_augmentations():
    first, second = _epoch(workers=0, epoch=0), _epoch(workers=0, epoch=1)
    assert not torch.equal(first[0]["index"], second[0]["index"])
    order = torch.cat([batch["index"] for batch in first])
    assert sorted(order.tolist()) == list(range(16))  # a permutation of the data set


def test_an_epoch_started_part_way_continues_with_the_same_batches():
    whole = _epoch(workers=0, epoch=2)
    _assert_same(_epoch(workers=0, epoch=2, skip=1), whole[1:])
    _assert_same(_epoch(workers=0, epoch=2, skip=1, limit=2), whole[1:3])


def test_loading_leaves_the_global_generator_alone():
    config = toy_config("unused", overrides={"data.workers": 0, "data.batch_size": 4})
    dataset = RandomlyAugmented(size=16, image_size=4)
    loader, _ = build_loaders(config, dataset, dataset, DistributedContext(torch.device("cpu")))
    seed_epoch(loader, config.run.seed, 0, rank=0)
    before = torch.get_rng_state()
    list(loader)  # augments in this process
    assert torch.equal(torch.get_rng_state(), before)  # dropout's random stream is untouched


def test_training_batches_all_have_the_same_size():
    """The last incomplete batch is dropped: BatchNorm, DDP and CUDA graphs
    (run.compile_mode) need it."""
    config = toy_config("unused", overrides={"data.workers": 0, "data.batch_size": 4})
    dataset = RandomlyAugmented(size=18, image_size=4)
    loader, _ = build_loaders(config, dataset, dataset, DistributedContext(torch.device("cpu")))
    seed_epoch(loader, config.run.seed, 0, rank=0)
    assert [len(batch["index"]) for batch in loader] == [4, 4, 4, 4]  # 2 of 18 images left out
