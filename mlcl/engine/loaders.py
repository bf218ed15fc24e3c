"""Data sets and loaders for training, and the seeding that makes a run reproducible.

The order of the training images depends only on ``(run.seed, epoch)``: the sampler is a
``DistributedSampler`` (also in a single process) whose permutation is drawn from that pair. The
augmentation of an image depends only on ``(run.seed, epoch, index)``: the sampler hands out
``(epoch, index)`` pairs and :class:`SeededItems` draws each image's random numbers from a
generator seeded with them, whichever loader worker reads it. The global generators (dropout)
are re-seeded from ``(run.seed, epoch, rank)`` at the start of every epoch. A resumed run
therefore sees exactly the batches an uninterrupted run sees, with any number of workers, and the
workers can live from one epoch to the next (``persistent_workers``).

With ``data.decode: device`` the workers deliver JPEG bytes and each image's augmentation
parameters (drawn the same way), and :func:`batch_to_device` decodes and augments the batch on
the training device (:mod:`mlcl.data.device_decode`).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    SequentialSampler,
    default_collate,
)

from mlcl.config import Config
from mlcl.data import MultiLabelDataset, build_dataset, build_transforms, ensure_synthetic
from mlcl.data.device_decode import DeviceDecoder, EncodedImages, collate_encoded
from mlcl.engine.process_group import DistributedContext, barrier
from mlcl.errors import ConfigError, DataError


def build_datasets(config: Config, context: DistributedContext) -> tuple[Dataset, Dataset]:
    """The training and validation splits that ``config.data`` describes, with their
    transforms. Validation always has full labels (evaluation reads ``full_labels``)."""
    root = data_root(config, context)
    return build_split(config, "train", root), build_split(config, "val", root)


def data_root(config: Config, context: DistributedContext | None = None) -> str:
    """``data.root``; for the built-in data, where it is (generated on first use: by the main
    process, while the others wait)."""
    data = config.data
    if data.dataset != "synthetic":
        return data.root
    root = data.root
    for main_turn in (True, False):
        if context is None or context.is_main == main_turn:
            root = str(
                ensure_synthetic(
                    data.root,
                    data.synthetic_train,
                    data.synthetic_val,
                    data.synthetic_image_size,
                    data.synthetic_seed,
                    data.synthetic_setting,
                )
            )
        if context is not None:
            barrier(context)
    return root


def build_split(config: Config, split: str, root: str, train: bool | None = None) -> Dataset:
    """One split with its transform: training augmentations and ``data.labels`` for the
    training split (unless ``train=False``), plain resizing and full labels otherwise."""
    data = config.data
    train = split == "train" if train is None else train
    if split == "holdout" and data.holdout <= 0:
        raise ConfigError(
            "data.holdout: 0 holds no training image out, so there is no 'holdout' split; "
            "train with e.g. data.holdout=0.1"
        )
    transform = build_transforms(
        train, data.image_size, data.mean, data.std, data.augment, data.randaugment, data.cutout
    )
    dataset = build_dataset(
        data.dataset,
        root,
        "train" if split == "holdout" else split,
        transform,
        keep_empty=data.keep_empty,
        use_difficult=data.use_difficult,
        labels=data.labels if train else "full",
        single_positive_seed=data.single_positive_seed,
        limit=data.limit_val if split == "val" else data.limit_train,
    )
    if split == "val" or data.holdout <= 0:
        return dataset
    held = holdout_indices(len(dataset), data.holdout)
    if split == "holdout":
        return dataset.select(held)
    kept = torch.ones(len(dataset), dtype=torch.bool)
    kept[held] = False
    return dataset.select(kept.nonzero().flatten())


# The same draw for every run.seed: a run calibrated later must find the images its training
# never saw.
HOLDOUT_SEED = 20240601


def holdout_indices(num_images: int, fraction: float) -> torch.Tensor:
    """The ``round(fraction · N)`` (at least one) training images of the "holdout" split,
    ascending: a fixed draw."""
    count = min(max(1, round(fraction * num_images)), num_images - 1)
    generator = torch.Generator().manual_seed(HOLDOUT_SEED)
    return torch.randperm(num_images, generator=generator)[:count].sort().values


class EpochSampler(DistributedSampler):
    """``DistributedSampler`` that yields ``(epoch, index)`` pairs (for :class:`SeededItems`) and
    whose epoch can start part-way (``skip``: resuming from a mid-epoch checkpoint) and end early
    (``limit``: the last epoch of a ``run.max_steps`` run)."""

    def __init__(self, dataset: Dataset, context: DistributedContext, seed: int) -> None:
        super().__init__(
            dataset, num_replicas=context.world_size, rank=context.rank, shuffle=True, seed=seed
        )
        self.skip = 0
        self.limit: int | None = None

    def __iter__(self) -> Iterator[tuple[int, int]]:
        stop = None if self.limit is None else self.skip + self.limit
        for index in itertools.islice(super().__iter__(), self.skip, stop):
            yield self.epoch, index

    def __len__(self) -> int:
        remaining = super().__len__() - self.skip
        return remaining if self.limit is None else min(remaining, self.limit)


@dataclass
class BadImage:
    """What :class:`SeededItems` returns, with ``skip_bad_images``, for an image that cannot be
    decoded; :func:`collate_skipping_bad` leaves it out of its batch."""

    index: int
    path: str
    reason: str  # the DataError's message


class SeededItems(Dataset):
    """``dataset[index]`` with random numbers (augmentations) drawn from a generator seeded by
    ``(seed, epoch, index)``; the global generators are left as they were. With
    ``skip_bad_images`` an image that cannot be decoded comes back as a :class:`BadImage`."""

    def __init__(self, dataset: Dataset, seed: int, skip_bad_images: bool = False) -> None:
        self.dataset = dataset
        self.seed = seed
        self.skip_bad_images = skip_bad_images

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, index = key
        item_seed = int(np.random.SeedSequence([self.seed, epoch, index]).generate_state(1)[0])
        python_state = random.getstate()
        try:
            with torch.random.fork_rng(devices=[]):  # restores torch's CPU generator afterwards
                torch.manual_seed(item_seed)
                random.seed(item_seed)
                item = self.dataset[index]
        except DataError as err:
            if not self.skip_bad_images:
                raise
            paths = getattr(self.dataset, "image_paths", None)
            return BadImage(index, str(paths[index]) if paths else str(err), str(err))
        finally:
            random.setstate(python_state)
        return item


def collate_skipping_bad(items: list[Any]) -> dict[str, Any]:
    """The default batch of the decodable items, and under ``bad_images`` a list of the
    :class:`BadImage` left out. The batch is smaller by those; a batch without any decodable
    image means the data set is broken, not a few files."""
    good = [item for item in items if not isinstance(item, BadImage)]
    bad = [item for item in items if isinstance(item, BadImage)]
    if not good:
        raise DataError(
            f"data.bad_images: no image of a batch of {len(items)} could be decoded, e.g. "
            f"{bad[0].reason}; check the data set (mlcl data check)"
        )
    batch = default_collate(good)
    batch["bad_images"] = bad
    return batch


def build_loaders(
    config: Config, train_dataset: Dataset, val_dataset: Dataset, context: DistributedContext
) -> tuple[DataLoader, DataLoader]:
    """Training loader (shuffled per epoch, last partial batch dropped) and validation loader
    (in dataset order; split across processes when distributed). Batch sizes are per process."""
    data = config.data
    if data.decode == "device":
        train_dataset = encoded(config, train_dataset, train=True)
        val_dataset = encoded(config, val_dataset, train=False)
    sampler = EpochSampler(train_dataset, context, config.run.seed)
    skip_bad = data.bad_images == "skip"
    train_loader = DataLoader(
        SeededItems(train_dataset, config.run.seed, skip_bad_images=skip_bad),
        batch_size=data.batch_size,
        sampler=sampler,
        num_workers=data.workers,
        persistent_workers=data.workers > 0,  # no new worker processes every epoch
        pin_memory=context.device.type == "cuda",
        # A batch of one breaks BatchNorm, equal batches keep DDP in step, and static shapes
        # let run.compile_mode replay CUDA graphs.
        drop_last=True,
        collate_fn=collate_skipping_bad if skip_bad else _collate_fn(train_dataset),
        generator=torch.Generator(),  # the loader's own draws leave the global generator alone
    )
    if len(train_loader) == 0:
        raise ConfigError(
            f"data.batch_size: {data.batch_size} per process is more than the "
            f"{len(sampler)} training images each of the {context.world_size} process(es) gets"
        )
    val_loader = build_eval_loader(
        val_dataset, data.eval_batch_size or data.batch_size, data.workers, context, persistent=True
    )
    return train_loader, val_loader


def split_eval_loader(config: Config, dataset: Dataset, device: torch.device) -> DataLoader:
    """A one-process evaluation loader over ``dataset`` with ``config.data``'s batch size and
    workers: what the commands that read a checkpoint's split (calibrate, prototypes) use."""
    data = config.data
    return build_eval_loader(
        dataset, data.eval_batch_size or data.batch_size, data.workers, DistributedContext(device)
    )


def build_eval_loader(
    dataset: Dataset,
    batch_size: int,
    workers: int,
    context: DistributedContext,
    persistent: bool = False,
) -> DataLoader:
    """A loader over ``dataset`` in order; under DDP each process reads every world_size-th
    image (the sampler pads with repeats; evaluation puts results back by ``index``).
    ``persistent`` keeps its workers between passes (evaluation after every epoch)."""
    if context.distributed:
        sampler = DistributedSampler(
            dataset, num_replicas=context.world_size, rank=context.rank, shuffle=False
        )
    else:
        sampler = SequentialSampler(dataset)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=persistent and workers > 0,
        pin_memory=context.device.type == "cuda",
        collate_fn=_collate_fn(dataset),
        generator=torch.Generator(),  # the loader's own draws leave the global generator alone
    )


def encoded(config: Config, dataset: Dataset, train: bool) -> EncodedImages:
    """``dataset`` for ``data.decode=device``: its JPEG files' bytes, with the training
    augmentations of ``config.data`` drawn per image when ``train``."""
    data = config.data
    if data.randaugment:
        raise ConfigError(
            "data.randaugment: RandAugment has no device version; use data.decode=loader with it"
        )
    if data.bad_images == "skip":  # the device decodes a whole batch at once
        raise ConfigError("data.bad_images: skip needs data.decode=loader")
    if not isinstance(dataset, MultiLabelDataset):
        raise ConfigError(
            f"data.decode: 'device' decodes the image files of a MultiLabelDataset, and "
            f"{type(dataset).__name__} has none; use data.decode=loader"
        )
    if not train:
        return EncodedImages(dataset, data.image_size)
    return EncodedImages(dataset, data.image_size, data.augment, data.cutout)


def device_decoder(config: Config) -> DeviceDecoder | None:
    """What decodes the batches on the device with ``data.decode=device``; ``None`` when the
    loader's workers decode (``data.decode=loader``)."""
    data = config.data
    if data.decode == "loader":
        return None
    return DeviceDecoder(data.image_size, data.mean, data.std)


def batch_to_device(
    batch: dict[str, Any],
    device: torch.device,
    channels_last: bool,
    decoder: DeviceDecoder | None = None,
) -> dict[str, torch.Tensor]:
    """A loader's batch on ``device`` as a step takes it: ``image`` ``[B, 3, H, W]`` float
    (channels-last if asked), ``labels``, ``observed``, ``index``. With a ``decoder`` the images
    arrive encoded and are decoded and augmented there."""
    if decoder is not None:
        batch = decoder(batch, device)
    else:
        batch = {name: value.to(device, non_blocking=True) for name, value in batch.items()}
    if channels_last:
        batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
    return batch


def _collate_fn(dataset: Dataset) -> Callable[[list[Any]], Any] | None:
    """Batches of encoded images keep the files' bytes as a list; the rest: the default."""
    return collate_encoded if isinstance(dataset, EncodedImages) else None


def seed_epoch(
    loader: DataLoader,
    seed: int,
    epoch: int,
    rank: int,
    skip_batches: int = 0,
    max_batches: int | None = None,
) -> None:
    """Make epoch ``epoch`` of ``loader`` depend only on ``(seed, epoch)``: its order and its
    augmentations, and the global generators (dropout) on ``(seed, epoch, rank)``.
    ``skip_batches`` / ``max_batches`` start the epoch later / end it sooner."""
    sampler = loader.sampler
    sampler.set_epoch(epoch)
    sampler.skip = skip_batches * loader.batch_size
    sampler.limit = None if max_batches is None else max_batches * loader.batch_size
    seed_everything(int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0]))


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
