"""Models: backbones (timm), heads, and the modules each method adds on top."""

from mlcl.models.backbone import Backbone
from mlcl.models.heads import GroupWiseLinear

__all__ = ["Backbone", "GroupWiseLinear"]
