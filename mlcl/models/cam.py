"""Class activation maps: where in the image the classifier sees a class.

- :func:`class_activation_map` (CAM, Zhou et al., CVPR 2016): for a head that is global average
  pooling then a linear layer, the class score is ``y_c = Σ_k W_ck · mean_ij A_k(i, j) + b_c``,
  so ``Σ_k W_ck A_k(i, j)`` says how much position ``(i, j)`` adds to it.
- :func:`grad_cam` (Selvaraju et al., ICCV 2017): for any differentiable head, weight each
  channel by the spatial mean of the score's gradient, ``α_k = mean_ij ∂y_c / ∂A_k(i, j)``, and
  take ``ReLU(Σ_k α_k A_k)``. For GAP + linear, ``α_k = W_ck / (h·w)``: Grad-CAM is CAM divided by
  ``h·w``, the same map once normalised.

Both are ReLU-ed and min–max normalised to [0, 1] per image. :func:`cam_to_masks` turns a map
into Scob's semantic guidance: resized to the image, pooled to each feature scale's grid, corner
cells dropped, binarised. (Scob's code uses pytorch-grad-cam's Grad-CAM++ on the last backbone
stage; Grad-CAM is the variant its paper and notes describe.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F


def normalize_maps(maps: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Min–max normalise each map of ``[B, h, w]`` to [0, 1] (a constant map becomes 0)."""
    flat = maps.flatten(1)
    low = flat.min(dim=1).values[:, None, None]
    high = flat.max(dim=1).values[:, None, None]
    return (maps - low) / (high - low + eps)


def class_activation_map(
    features: torch.Tensor, classifier_weight: torch.Tensor, classes: torch.Tensor
) -> torch.Tensor:
    """CAM of class ``classes[b]`` for every image: ``[B, F, h, w]`` features and the linear
    classifier's ``[C, F]`` weight → ``[B, h, w]`` in [0, 1]."""
    weights = classifier_weight[classes].to(features.dtype)  # [B, F]
    maps = torch.einsum("bf,bfhw->bhw", weights, features)
    return normalize_maps(F.relu(maps))


def grad_cam(
    features: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    classes: torch.Tensor,
) -> torch.Tensor:
    """Grad-CAM of class ``classes[b]`` for every image, ``[B, h, w]`` in [0, 1].

    ``head`` maps the feature map ``[B, F, h, w]`` to logits ``[B, C]``. Only the gradient with
    respect to ``features`` is taken (``torch.autograd.grad``): no parameter's ``.grad`` changes,
    so it can run inside a training forward. Images are independent (each score depends only on
    its own features), so one backward of the summed scores gives every image's gradient.
    """
    with torch.enable_grad():
        features = features.detach().requires_grad_(True)
        logits = head(features)  # [B, C]
        scores = logits.gather(1, classes[:, None]).sum()
        (gradients,) = torch.autograd.grad(scores, features)
    channel_weights = gradients.mean(dim=(2, 3))  # [B, F]
    maps = torch.einsum("bf,bfhw->bhw", channel_weights, features.detach())
    return normalize_maps(F.relu(maps))


def cam_to_masks(
    cam: torch.Tensor,
    grid_sizes: Sequence[tuple[int, int]],
    image_size: tuple[int, int],
    threshold: float = 0.5,
    crop_corners: bool = True,
) -> list[torch.Tensor]:
    """Binary object masks ``[B, h_s, w_s]`` (True = part of the object) for every grid size.

    As in Scob's code: the ``[B, h, w]`` map in [0, 1] is resized (bilinear) to the image, averaged
    over each cell of the grid, its four corner cells are set to 0 (padding makes activations
    pile up there) and cells at or above ``threshold`` are kept.
    """
    full = F.interpolate(
        cam[:, None].float(), size=image_size, mode="bilinear", align_corners=False
    )
    masks = []
    for grid in grid_sizes:
        cells = F.adaptive_avg_pool2d(full, grid)[:, 0]  # [B, h_s, w_s]
        if crop_corners:
            cells = cells.clone()
            cells[:, 0, 0] = cells[:, 0, -1] = cells[:, -1, 0] = cells[:, -1, -1] = 0
        masks.append(cells >= threshold)
    return masks
