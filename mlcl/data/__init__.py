"""Data: multi-label datasets, transforms, single-positive labels and label statistics.

- :func:`build_dataset`: one entry for the built-in synthetic scenes, COCO 2014 / 2017,
  PASCAL VOC 2007 / 2012 and NUS-WIDE; every loader returns a :class:`MultiLabelDataset`.
- :func:`ensure_synthetic` / :func:`generate`: the built-in data set (COCO format, on disk).
- :func:`build_transforms`: torchvision v2 pipelines for training and evaluation.
- :mod:`mlcl.data.device_decode`: the same, on the training device (``data.decode: device``).
- :func:`make_single_positive`: the single-positive (SPML) labels of Cole et al. (2021).
- :mod:`mlcl.data.stats`: label frequency, co-occurrence, conditional probabilities.
- :func:`check_dataset`: validate a data set on disk (``mlcl data check``).
- :mod:`mlcl.data.download`: how to get the real data sets (``mlcl data download``).
"""

from mlcl.data.build import DATASETS, SPLITS, build_dataset
from mlcl.data.dataset import MultiLabelDataset, load_rgb
from mlcl.data.single_positive import (
    make_single_positive,
    sample_single_positive,
    single_positive_labels,
)
from mlcl.data.stats import (
    conditional_probability,
    cooccurrence,
    label_frequency,
    scene_cooccurrence,
)
from mlcl.data.synthetic import ensure_synthetic, generate
from mlcl.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms

__all__ = [
    "DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SPLITS",
    "MultiLabelDataset",
    "build_dataset",
    "build_transforms",
    "conditional_probability",
    "cooccurrence",
    "ensure_synthetic",
    "generate",
    "label_frequency",
    "load_rgb",
    "make_single_positive",
    "sample_single_positive",
    "scene_cooccurrence",
    "single_positive_labels",
]
