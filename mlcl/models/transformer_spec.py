"""The size of a transformer layer, one value for the three models that stack them.

Scob's masked transformer, SALGL's token encoder and the semantic decoder of Query2Label / SADCL
each build a stack of layers of one width; this spec says that width once, and each model takes
its own layer counts beside it (the semantic decoder has an encoder and a decoder stack).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class TransformerSpec:
    """Width of every layer of a transformer stack.

    ``dim`` is the token size ``D``; the models that project their input to it read 0 as "the
    input's channels, no projection" (:meth:`for_input`). ``ff_dim`` is the feed-forward width;
    0 means ``4·D``. Every model here trains with dropout 0.1, as DETR and the papers' code do.
    """

    dim: int
    heads: int
    ff_dim: int
    dropout: float = 0.1

    def for_input(self, in_channels: int) -> TransformerSpec:
        """This spec with its zeros resolved for an input of ``in_channels``: ``dim`` 0 becomes
        ``in_channels``, then ``ff_dim`` 0 becomes ``4·dim``."""
        dim = self.dim or in_channels
        return dataclasses.replace(self, dim=dim, ff_dim=self.ff_dim or 4 * dim)
