"""mlcl: multi-label image classification with contrastive learning.

The package behind the book. Each concern lives in its own sub-package:

- :mod:`mlcl.data`: datasets (COCO, VOC, NUS-WIDE, the built-in synthetic scenes), transforms,
  single-positive labels, label statistics.
- :mod:`mlcl.models`: backbones (timm), heads, decoders.
- :mod:`mlcl.losses`: ASL and the contrastive losses.
- :mod:`mlcl.methods`: each method as one object: model + losses + per-step/epoch hooks.
- :mod:`mlcl.engine`: training loop, evaluation, checkpoints, distributed set-up.
- :mod:`mlcl.metrics`: mAP and the threshold metrics of the multi-label literature.
"""

__version__ = "0.1.0"
