"""The build presets: one row per preset, everything a preset decides in one place.

A preset names SAME's masked autoencoder, the epochs of the three trainings and whether a
trained cnn3 victim gets the quarter-width cnn3-small shadow (``--shadow-arch auto``).
``same-build --preset NAME`` reads one row; ``make variants`` compares them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .mae import MaeConfig


@dataclass(frozen=True)
class Preset:
    mae: MaeConfig
    # Training epochs of the victim, the MAE and the shadow (each overridable on the command
    # line: --victim-epochs, --mae-epochs, --shadow-epochs).
    epochs: tuple[int, int, int]
    # `--shadow-arch auto` for a trained cnn3 victim: cnn3-small, measured by `make variants`
    # to score as well as the full-width shadow at this MAE (docs/performance.md).
    small_shadow: bool = False


_CPU_EPOCHS = (12, 40, 12)

# The build's default, chosen by `make variants` (issue 10, docs/performance.md): `cpu-lite`
# (with the cnn3-small shadow for a cnn3 victim) costs about a third of `cpu`'s CPU per image,
# and its per-query AUROC, averaged over training runs, is within 0.005 of cpu's on every
# attack of `make evaluate` or above it. Both designs vary by a few points between runs.
DEFAULT_PRESET = "cpu-lite"

PRESETS = {
    # The default until issue 10 (4 + 2 blocks, width 96); its MAE trains in ~3 min on 2 cores.
    "cpu": Preset(MaeConfig(), _CPU_EPOCHS),
    # The authors' sizes (patch 2, 192-wide, 12x3 encoder, 4x3 decoder); GPU-sized.
    "paper": Preset(
        MaeConfig(
            patch=2,
            embed=192,
            depth=12,
            heads=3,
            decoder_embed=192,
            decoder_depth=4,
            decoder_heads=3,
            mlp_ratio=4.0,
        ),
        (30, 500, 30),
    ),
    # The CIFAR-10 setting on CPU: the cpu MAE (patch 4: 64 patches at 32x32) with more
    # epochs for the harder data; the paper preset is GPU-sized.
    "cifar-cpu": Preset(MaeConfig(), (15, 60, 10)),
    # Cheaper scoring on CPU (issue 10; `make variants` measures cost and AUROC of each).
    # Patch 7: 16 tokens at 28x28 instead of 49, so attention and MLPs do about a third of
    # the work; same widths and depths as cpu.
    "cpu-p7": Preset(MaeConfig(patch=7), _CPU_EPOCHS),
    # Patch 7, and a narrower, shallower ViT (2 + 1 blocks of width 64).
    "cpu-p7-lite": Preset(MaeConfig(patch=7, embed=64, depth=2, decoder_depth=1), _CPU_EPOCHS),
    # Patch 4 as cpu (49 tokens), but 2 + 1 blocks of width 64, and the small shadow.
    "cpu-lite": Preset(MaeConfig(embed=64, depth=2, decoder_depth=1), _CPU_EPOCHS, True),
    # Patch 4, 1 + 1 blocks of width 32: where the small end of the patch-4 family stands.
    "cpu-mini": Preset(
        MaeConfig(embed=32, depth=1, heads=2, decoder_embed=32, decoder_depth=1, decoder_heads=2),
        _CPU_EPOCHS,
    ),
    # For tests: trains in seconds.
    "tiny": Preset(
        MaeConfig(
            patch=7, embed=32, depth=1, heads=2, decoder_embed=32, decoder_depth=1, decoder_heads=2
        ),
        (1, 1, 1),
    ),
}
