"""ResNet-18/34 for one-channel chest radiographs, with its class-activation map in the graph.

Plain torch (no torchvision). The head is a single logit read through a sigmoid: the only class
is "pneumonia present", so one logit carries the same information as a two-class softmax and
its CAM is simply the fc weights applied to the last feature map.

``forward`` returns ``(probability [N], cam [N, h, w])``; both are computed inside the graph so the
exported ONNX model (see :mod:`training.export`) carries them and the worker needs no torch.
The CAM is ``ReLU(sum_c w_c * F_c)`` on the last conv features ``F`` (stride 32, so 7x7 for a
224 input), divided by its per-image maximum so it lies in [0, 1].
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

#: blocks per stage for the supported depths (He et al. 2016, table 1)
STAGES: dict[int, tuple[int, int, int, int]] = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}

#: keeps the CAM division finite for an all-zero map (a confidently negative image)
CAM_EPS = 1e-6


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of :class:`ResNetCAM`; recorded in checkpoints and in the model card."""

    depth: int = 18
    #: channels of the first stage; 64 is the standard ResNet, the demo uses 16
    width: int = 64

    def __post_init__(self) -> None:
        if self.depth not in STAGES:
            raise ValueError(f"depth={self.depth} is not supported: use one of {sorted(STAGES)}")
        if self.width < 4:
            raise ValueError(f"width={self.width} is too small: use 16 or more (64 is standard)")

    @property
    def name(self) -> str:
        """Short architecture name for the model card, e.g. ``resnet18-w16``."""
        return f"resnet{self.depth}-w{self.width}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form for checkpoints."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(**data)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual block forward pass."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNetCAM(nn.Module):
    """ResNet with one input channel and a single pneumonia logit; returns probability and CAM."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        w = self.config.width
        self.stem = nn.Sequential(
            nn.Conv2d(1, w, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages = []
        in_ch = w
        for i, n_blocks in enumerate(STAGES[self.config.depth]):
            out_ch = w * 2**i
            blocks = []
            for b in range(n_blocks):
                blocks.append(BasicBlock(in_ch, out_ch, stride=2 if (b == 0 and i > 0) else 1))
                in_ch = out_ch
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(in_ch, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # zero-init the last BN of each residual branch: every block starts as the identity,
        # which makes short trainings (the demo, the tests) markedly more stable
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Last convolutional feature map [N, C, h, w]."""
        return self.stages(self.stem(x))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid pneumonia logit [N]; what the training loss sees."""
        return self.fc(self.features(x).mean(dim=(2, 3))).squeeze(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(probability [N], cam [N, h, w])`` for images [N, 1, S, S]."""
        feats = self.features(x)
        logit = self.fc(feats.mean(dim=(2, 3))).squeeze(1)
        # CAM for the single (positive) logit: fc weights over channels of the last feature map
        cam = torch.einsum("nchw,c->nhw", feats, self.fc.weight[0])
        cam = torch.relu(cam)
        cam = cam / (cam.amax(dim=(1, 2), keepdim=True) + CAM_EPS)
        return torch.sigmoid(logit), cam


def build_model(config: ModelConfig | None = None) -> ResNetCAM:
    """Build an untrained :class:`ResNetCAM` (default ResNet-18, width 64)."""
    return ResNetCAM(config)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
