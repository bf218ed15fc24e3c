"""Methods: each ties a model, its losses and its per-step / per-epoch hooks together.

Importing this package registers every method, so ``build_method`` knows them all.
"""

from mlcl.methods.base import Batch, Method, MethodOptions, split_weight_decay
from mlcl.methods.registry import (
    build_method,
    for_restoring,
    get_method_class,
    method_names,
    method_options,
    register_method,
    resolve_config,
)

# Registration happens on import; keep this list in reading order of the book.
from mlcl.methods import baseline  # noqa: F401  isort: skip
from mlcl.methods import q2l  # noqa: F401  isort: skip
from mlcl.methods import mulcon  # noqa: F401  isort: skip
from mlcl.methods import sadcl  # noqa: F401  isort: skip
from mlcl.methods import salgl  # noqa: F401  isort: skip
from mlcl.methods import spml  # noqa: F401  isort: skip
from mlcl.methods import scob  # noqa: F401  isort: skip

__all__ = [
    "Batch",
    "Method",
    "MethodOptions",
    "build_method",
    "for_restoring",
    "get_method_class",
    "method_names",
    "method_options",
    "register_method",
    "resolve_config",
    "split_weight_decay",
]
