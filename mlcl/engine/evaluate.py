"""Evaluation: a method's outputs over a whole split, then the metrics of the literature.

Every process runs ``method.inference`` on its share of the split; the outputs are gathered
(:class:`SplitOutputs`) and put back in dataset order by each image's ``index``, and scored
against the split's *full* labels (also when training saw single positives).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from mlcl.collectives import all_gather_rows
from mlcl.data.device_decode import DeviceDecoder
from mlcl.engine.loaders import batch_to_device, build_eval_loader
from mlcl.engine.process_group import DistributedContext, resolve_device
from mlcl.methods import Method
from mlcl.metrics import multilabel_metrics, threshold_metrics


class SplitOutputs:
    """Per-image outputs over a split, gathered across processes, row i for image i.

    ``update`` keeps each batch's outputs and the images' ``index``; ``compute`` concatenates
    them over the processes and writes row j of the gathered outputs to row ``index[j]``. A
    ``DistributedSampler`` pads the split with repeats of its first images: a repeat writes its
    image's row a second time, with the same values.
    """

    def __init__(self, size: int, row_shapes: dict[str, torch.Size]) -> None:
        self.size = size
        self.row_shapes = row_shapes
        self.index: list[torch.Tensor] = []  # [B] per batch
        self.outputs: dict[str, list[torch.Tensor]] = {name: [] for name in row_shapes}

    def update(self, index: torch.Tensor, outputs: dict[str, torch.Tensor]) -> None:
        """Add a batch: the images' dataset ``index`` ``[B]`` and their ``outputs``."""
        self.index.append(index)
        for name, value in outputs.items():
            self.outputs[name].append(value.float())

    def compute(self) -> dict[str, torch.Tensor]:
        """Every output ``[size, ...]`` in dataset order (a collective under DDP)."""
        index = all_gather_rows(torch.cat(self.index))  # [N'] (DDP pads with a few repeats)
        ordered = {}
        for name, row_shape in self.row_shapes.items():
            values = all_gather_rows(torch.cat(self.outputs[name]))  # [N', ...]
            ordered[name] = values.new_zeros((self.size, *row_shape))
            ordered[name][index.to(values.device)] = values
        return ordered


@torch.no_grad()
def collect_outputs(
    method: Method,
    loader: DataLoader,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    progress: bool = False,
    decoder: DeviceDecoder | None = None,
) -> dict[str, torch.Tensor]:
    """``method.inference`` over every image of ``loader``'s dataset, gathered across processes,
    row i for image i, on the CPU. ``decoder``: for a loader of encoded images
    (``data.decode=device``)."""
    was_training = method.training
    method.eval()
    collected: SplitOutputs | None = None
    for batch in tqdm(loader, desc="evaluate", leave=False, disable=not progress):
        batch = batch_to_device(batch, device, channels_last, decoder)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            outputs = method.inference(batch["image"])
        if collected is None:  # the first batch tells the outputs' names and row shapes
            row_shapes = {name: value.shape[1:] for name, value in outputs.items()}
            collected = SplitOutputs(len(loader.dataset), row_shapes)
        collected.update(batch["index"], outputs)
    method.train(was_training)
    return {name: value.cpu() for name, value in collected.compute().items()}


def compute_metrics(
    method: Method,
    outputs: dict[str, torch.Tensor],
    dataset: Any,
    threshold: float = 0.5,
    thresholds: torch.Tensor | None = None,
) -> dict[str, Any]:
    """mAP and the threshold metrics of ``outputs["logits"]`` against ``dataset.full_labels``,
    plus ``method.extra_metrics``; with calibrated per-class ``thresholds`` ``[C]`` also CP, CR,
    CF1, OP, OR, OF1 at them (keys ``CF1@cal``...)."""
    logits = outputs["logits"]  # [N, C]
    results = multilabel_metrics(logits, dataset.full_labels, threshold, from_logits=True)
    results |= method.extra_metrics(outputs, dataset)
    if thresholds is not None:
        targets = torch.as_tensor(dataset.full_labels).bool()
        results |= threshold_metrics(logits, targets, thresholds, from_logits=True, suffix="@cal")
    return results


def evaluate(
    method: Method,
    data: Dataset | DataLoader,
    *,
    batch_size: int = 64,
    workers: int = 0,
    device: torch.device | str | None = None,
    amp_dtype: torch.dtype | None = None,
    threshold: float = 0.5,
    thresholds: torch.Tensor | None = None,
    channels_last: bool = False,
    progress: bool = False,
    context: DistributedContext | None = None,
) -> dict[str, Any]:
    """Metrics of ``method`` on a data set (or a loader over one), e.g. ``{"mAP": 71.3, ...}``.

    ``device`` defaults to the device of the method's parameters. Under DDP pass the ``context``
    so that each process evaluates its share. ``thresholds``: calibrated per-class thresholds
    ``[C]`` to report the ``...@cal`` metrics at too.
    """
    if device is None:
        device = next(method.parameters()).device
    device = resolve_device(str(device)) if isinstance(device, str) else device
    if isinstance(data, DataLoader):
        loader = data
    else:
        context = context or DistributedContext(device)
        loader = build_eval_loader(data, batch_size, workers, context)
    outputs = collect_outputs(method, loader, device, amp_dtype, channels_last, progress)
    return compute_metrics(method, outputs, loader.dataset, threshold, thresholds)
