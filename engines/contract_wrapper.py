"""The contract around a PyTorch segmentation network: uint8 BGR NHWC in, class ids out.

Exported to ONNX by training.export and run directly by the PyTorch backend, so both compute
the same arithmetic the host would otherwise do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Per-channel statistics of CamVid train in BGR order (0-255 scale), computed by
# training.data.channel_stats; images stay BGR end to end so no channel swap is needed.
MEAN_BGR = (110.3, 108.4, 105.0)
STD_BGR = (78.3, 79.5, 78.3)


class ContractWrapper(nn.Module):
    """uint8 BGR NHWC in, class ids out: the graph does the arithmetic the host would do."""

    def __init__(self, net: nn.Module, mean: tuple[float, ...] = MEAN_BGR,
                 std: tuple[float, ...] = STD_BGR):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("inv_std", 1.0 / torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.permute(0, 3, 1, 2).float()
        x = (x - self.mean) * self.inv_std
        logits = self.net(x)
        logits = F.interpolate(logits, size=image.shape[1:3], mode="bilinear", align_corners=False)
        # ArgMax yields int64; going through float lets TensorRT cast to uint8 (4x fewer bytes
        # back to the host than int32, 40x fewer than logits).
        return logits.argmax(dim=1).float().to(torch.uint8)


def preprocess_bgr(images: torch.Tensor) -> torch.Tensor:
    """uint8 BGR NHWC batch → normalised float NCHW, the same arithmetic as ContractWrapper."""
    mean = torch.tensor(MEAN_BGR, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(STD_BGR, device=images.device).view(1, 3, 1, 1)
    return (images.permute(0, 3, 1, 2).float() - mean) / std
