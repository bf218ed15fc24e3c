"""The training engine: ``fit`` a method from a configuration, ``evaluate`` it, checkpoints.

- :mod:`mlcl.engine.train`: ``fit``, ``train_one_epoch``, ``training_step`` (the loop, each
  given what it uses), and ``Callback`` for watching a run's epochs.
- :mod:`mlcl.engine.evaluate`: ``evaluate`` (metrics of a method on a data set).
- :mod:`mlcl.engine.loaders`: ``build_datasets``, ``build_loaders``, per-epoch seeding,
  ``batch_to_device`` (which decodes the images there with ``data.decode: device``).
- :mod:`mlcl.engine.optim`: AdamW per phase, learning-rate schedules (torch's), mixed precision;
  ``Optimization`` holds a run's optimisers, schedules and gradient scaler.
- :mod:`mlcl.engine.checkpoint`: atomic checkpoints and ``load_method`` for a trained one.
- :mod:`mlcl.engine.process_group`: ``torchrun`` set-up.
- :mod:`mlcl.engine.run_dir`: the run directory (config, metrics, summary).
"""

from mlcl.engine.checkpoint import load_checkpoint, load_method, save_checkpoint
from mlcl.engine.evaluate import evaluate
from mlcl.engine.loaders import build_datasets, build_loaders
from mlcl.engine.run_dir import read_metrics
from mlcl.engine.train import Callback, fit, train_one_epoch

__all__ = [
    "Callback",
    "build_datasets",
    "build_loaders",
    "evaluate",
    "fit",
    "load_checkpoint",
    "load_method",
    "read_metrics",
    "save_checkpoint",
    "train_one_epoch",
]
