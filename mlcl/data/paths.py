"""Image paths read from annotation files stay inside the data set's root.

An annotation file names each image by a path relative to a folder of the data set. A name such as
``../../elsewhere/x.jpg`` (or an absolute path) would make training read files from anywhere on the
machine, so every loader resolves its image names through :func:`resolve_inside`.

The check is lexical, not through the file system: a data root whose image folder is a symbolic
link to another disk (a common layout for COCO) stays valid.
"""

from __future__ import annotations

import os
from pathlib import Path

from mlcl.errors import DataError


def resolve_inside(root: str | Path, name: str, source: str | Path, entry: str = "") -> Path:
    """``root / name``, after checking that it does not leave ``root``.

    Args:
        root: the folder the annotation file's names are relative to.
        name: the image name as the annotation file writes it.
        source: the annotation file, for the message.
        entry: where in ``source`` the name stands (``"line 12"``, ``"image id 7"``), for the
            message.

    Raises:
        DataError: naming ``source``, the entry and the name, when ``name`` is absolute or
            its ``..`` parts climb out of ``root``.
    """
    root = Path(root)
    where = f"{source}: {entry}: " if entry else f"{source}: "
    if Path(name).is_absolute():
        raise DataError(f"{where}image path {name!r} is absolute; it must be relative to {root}")
    normalised = os.path.normpath(name)
    if normalised == ".." or normalised.startswith(".." + os.sep):
        raise DataError(f"{where}image path {name!r} leads outside the data root {root}")
    return root / normalised
