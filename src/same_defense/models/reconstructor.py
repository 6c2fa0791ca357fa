"""The graph exported as the ``reconstructor`` model: everything SAME needs from one image.

IMAGE [N, C, H, W] ->
- RECON_ERROR [N, 1]: mean squared error of the full reconstruction;
- SHADOW_LOGITS [N, classes]: the shadow classifier on the reconstruction;
- INPUT_STATS [N, 3]: non-finite pixel count, min and max of the finite pixels, so the
  defense step can reject bad input without receiving the image.
Reductions happen inside the graph so only small tensors leave it.
"""

from __future__ import annotations

import torch
from torch import nn

from .mae import MaskedAutoencoder


class ReconstructorGraph(nn.Module):
    def __init__(self, mae: MaskedAutoencoder, shadow: nn.Module) -> None:
        super().__init__()
        self.mae = mae
        self.shadow = shadow

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        flat = image.flatten(1)
        finite = torch.isfinite(flat)
        nonfinite = (~finite).sum(dim=1, keepdim=True).to(image.dtype)
        # Replace bad pixels by a neutral value so min/max describe the finite ones.
        clean = torch.where(finite, flat, torch.full_like(flat, 0.5))
        stats = torch.cat(
            [nonfinite, clean.amin(dim=1, keepdim=True), clean.amax(dim=1, keepdim=True)], dim=1
        )
        recon = self.mae.reconstruct(image)
        error = (recon - image).pow(2).flatten(1).mean(dim=1, keepdim=True)
        return error, self.shadow(recon), stats
