"""Victim classifiers: the paper's 3-conv CNN for 1x28x28 and ResNet-18 for 3x32x32.

Both take any (C, H, W) and class count (cnn3 from 8x8). SAME's shadow classifier uses one of
them: the victim's own architecture when the build trained it, else one chosen by image size
for a provided victim (``export.victim.arguments.choose_shadow_architecture``).
"""

from __future__ import annotations

import torch
from torch import nn

VICTIM_ARCHITECTURES = ("cnn3", "resnet18")
# Shadow-only: cnn3 at a quarter of the width (about 1/16 of its convolution work), a cheaper
# shadow distilled to agree with the victim on reconstructions (issue 10, `make variants`).
SHADOW_ONLY_ARCHITECTURES = ("cnn3-small",)
CNN3_WIDTHS = {"cnn3": (32, 64, 128, 128), "cnn3-small": (8, 16, 32, 64)}


class Cnn3(nn.Module):
    """Three conv blocks and two dense layers; works for any input of at least 8x8.

    ``widths``: the three conv blocks' channels and the dense layer's units.
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        widths: tuple[int, int, int, int] = CNN3_WIDTHS["cnn3"],
    ) -> None:
        super().__init__()
        channels = in_shape[0]
        if min(in_shape[1:]) < 8:  # three 2x poolings would leave no pixel
            raise ValueError(f"cnn3 needs images of at least 8x8, got {in_shape}: use resnet18")
        c1, c2, c3, dense = widths
        self.features = nn.Sequential(
            nn.Conv2d(channels, c1, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, *in_shape)).numel()
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, dense),
            nn.ReLU(),
            nn.Dropout(0.25),
            nn.Linear(dense, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.skip = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18 (3x3 stem, no max-pool)."""

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_shape[0], 64, 3, 1, 1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
        ]
        cin = 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [_BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1)]
            cin = cout
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def build_classifier(
    architecture: str, in_shape: tuple[int, int, int], num_classes: int
) -> nn.Module:
    if architecture in CNN3_WIDTHS:
        return Cnn3(in_shape, num_classes, CNN3_WIDTHS[architecture])
    if architecture == "resnet18":
        return ResNet18(in_shape, num_classes)
    known = VICTIM_ARCHITECTURES + SHADOW_ONLY_ARCHITECTURES
    raise ValueError(f"unknown architecture {architecture!r}; choose one of {', '.join(known)}")
