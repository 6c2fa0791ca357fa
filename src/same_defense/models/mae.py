"""SAME's masked autoencoder: a ViT encoder over the visible patches, a ViT decoder over all.

Trained with a high mask ratio (0.75); scored with mask ratio 0 (full reconstruction), the
path that is exported to ONNX and has no random operations.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn


@dataclass(frozen=True)
class MaeConfig:
    patch: int = 4
    embed: int = 96
    depth: int = 4
    heads: int = 4
    decoder_embed: int = 64
    decoder_depth: int = 2
    decoder_heads: int = 4
    mlp_ratio: float = 2.0
    mask_ratio: float = 0.75

    def to_dict(self) -> dict:
        return asdict(self)


def fit_to_shape(config: MaeConfig, in_shape: tuple[int, int, int]) -> MaeConfig:
    """``config`` with the patch size nearest its own that divides both image sides (a preset
    tuned at 28x28 uses patch 7; at 32x32 the nearest is 8)."""
    _, height, width = in_shape
    common = math.gcd(height, width)
    divisors = [p for p in range(2, common + 1) if common % p == 0] or [1]
    patch = min(divisors, key=lambda p: (abs(p - config.patch), -p))
    return config if patch == config.patch else replace(config, patch=patch)


def _blocks(width: int, depth: int, heads: int, mlp_ratio: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        width,
        heads,
        int(width * mlp_ratio),
        dropout=0.0,
        activation="gelu",
        batch_first=True,
        norm_first=True,
    )
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


class MaskedAutoencoder(nn.Module):
    def __init__(self, in_shape: tuple[int, int, int], config: MaeConfig) -> None:
        super().__init__()
        channels, height, width = in_shape
        p = config.patch
        if height % p or width % p:
            raise ValueError(f"patch size {p} does not divide the image size {height}x{width}")
        self.config = config
        self.in_shape = in_shape
        self.grid = (height // p, width // p)
        n_patches = self.grid[0] * self.grid[1]
        patch_dim = channels * p * p
        self.patch_embed = nn.Linear(patch_dim, config.embed)
        self.pos = nn.Parameter(torch.randn(1, n_patches, config.embed) * 0.02)
        self.encoder = _blocks(config.embed, config.depth, config.heads, config.mlp_ratio)
        self.encoder_norm = nn.LayerNorm(config.embed)
        self.decoder_embed = nn.Linear(config.embed, config.decoder_embed)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.decoder_embed))
        self.decoder_pos = nn.Parameter(torch.randn(1, n_patches, config.decoder_embed) * 0.02)
        self.decoder = _blocks(
            config.decoder_embed, config.decoder_depth, config.decoder_heads, config.mlp_ratio
        )
        self.decoder_norm = nn.LayerNorm(config.decoder_embed)
        self.head = nn.Linear(config.decoder_embed, patch_dim)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        n, c, _, _ = x.shape
        p, (gh, gw) = self.config.patch, self.grid
        x = x.reshape(n, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(n, gh * gw, c * p * p)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        n = patches.shape[0]
        c, p, (gh, gw) = self.in_shape[0], self.config.patch, self.grid
        x = patches.reshape(n, gh, gw, c, p, p).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(n, c, gh * p, gw * p)

    def _decode(self, latent: torch.Tensor) -> torch.Tensor:
        y = self.decoder_norm(self.decoder(latent + self.decoder_pos))
        return self.unpatchify(torch.sigmoid(self.head(y)))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Full reconstruction (mask ratio 0): deterministic, the exported path."""
        tokens = self.patch_embed(self.patchify(x)) + self.pos
        latent = self.encoder_norm(self.encoder(tokens))
        return self._decode(self.decoder_embed(latent))

    def forward_masked(self, x: torch.Tensor, mask_ratio: float | None = None) -> torch.Tensor:
        """Reconstruction from a random subset of visible patches (training, shadow data)."""
        ratio = self.config.mask_ratio if mask_ratio is None else mask_ratio
        tokens = self.patch_embed(self.patchify(x)) + self.pos
        n, length, width = tokens.shape
        keep = max(1, int(round(length * (1 - ratio))))
        order = torch.rand(n, length, device=x.device).argsort(dim=1)
        restore = order.argsort(dim=1)
        visible = torch.gather(tokens, 1, order[:, :keep, None].expand(-1, -1, width))
        latent = self.decoder_embed(self.encoder_norm(self.encoder(visible)))
        filler = self.mask_token.expand(n, length - keep, -1)
        full = torch.cat([latent, filler], dim=1)
        full = torch.gather(full, 1, restore[:, :, None].expand(-1, -1, full.shape[2]))
        return self._decode(full)
