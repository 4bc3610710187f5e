"""RoadSegNet: a small real-time segmentation network built for fast CPU and GPU inference.

Design notes (why, not what):
- Plain 3x3 convolutions with BatchNorm + ReLU only. Depthwise and dilated-depthwise blocks
  (DABNet, LMFFNet, CGNet) have few FLOPs but run slowly on CPUs and on TensorRT at batch 1,
  because they are memory-bound; dense 3x3 convs map onto GEMM kernels that run near peak.
- Resolution drops to 1/4 in two strided convs (like BiSeNetV2's stem), so no layer runs at
  full or half resolution except those two.
- A 1/16 context stage with dilated residual blocks and a global-pooling context vector gives a
  large receptive field cheaply (the 1/16 map is only 23x30 at 360x480).
- A U-shaped decoder adds the 1/8 and 1/4 features back for thin objects (poles, signs,
  pedestrians), as PIDNet's detail branch and TwinLiteNet's decoder do.
- Two auxiliary heads (1/8, 1/16) give deep supervision during training and are not exported.
- Optionally (`instance_norm`), half the channels of the early layers are normalised per image
  (IBN-Net): a frame's own brightness, contrast and colour cast are taken out where they enter.

RoadSegNet-lite0 (`LiteSegNet`) puts the same decoder on EfficientNet-Lite0's encoder (Tan & Le,
2019; the Lite variant has ReLU6 and no squeeze-excitation, so it exports and quantises cleanly),
so that it can start from ImageNet weights (training.pretrained): 266 frames of two drives
teach one network too little about the world to recognise a drive it never saw. lite1 and lite2
are EfficientNet's own compound scaling of that encoder (deeper; lite2 also wider), same decoder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class NetConfig:
    """Channel widths of the stages at 1/2, 1/4, 1/8 and 1/16 resolution."""

    widths: tuple[int, int, int, int] = (16, 32, 64, 128)
    blocks: tuple[int, int, int] = (1, 2, 2)  # residual blocks at 1/4, 1/8, 1/16
    num_classes: int = 11
    instance_norm: tuple[str, ...] = ()  # stages whose norms are HalfInstanceNorm (IBN_STAGES)


# Input pixels per cell of the 1/16 context map.
CONTEXT_STRIDE = 16

# Named sizes for the speed/accuracy frontier; "base" is the shipped default.
CONFIGS: dict[str, NetConfig] = {
    "small": NetConfig(widths=(16, 24, 48, 96), blocks=(1, 2, 2)),
    "base": NetConfig(),
    "large": NetConfig(widths=(24, 48, 80, 160), blocks=(1, 2, 3)),
}


# The stages that may take HalfInstanceNorm: early ones, where style lives and content is thin.
IBN_STAGES = ("stem", "stage4", "stage8")


class HalfInstanceNorm(nn.Module):
    """IBN-Net's normalisation (Pan et al., ECCV 2018): the first half of the channels
    normalised over each image on its own (InstanceNorm: that frame's contrast and colour cast
    taken out), the rest by BatchNorm (the content the later layers need)."""

    def __init__(self, channels: int):
        super().__init__()
        self.split = channels // 2
        self.instance = nn.InstanceNorm2d(self.split, affine=True)
        self.batch = nn.BatchNorm2d(channels - self.split)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per_image, per_batch = torch.split(x, [self.split, x.shape[1] - self.split], dim=1)
        return torch.cat([self.instance(per_image), self.batch(per_batch)], dim=1)


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, dilation: int = 1,
                 instance_half: bool = False):
        padding = dilation * (kernel - 1) // 2
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, padding, dilation=dilation, bias=False),
            HalfInstanceNorm(cout) if instance_half else nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class ResidualBlock(nn.Module):
    """ResNet basic block; the second conv may be dilated to grow the receptive field."""

    def __init__(self, channels: int, dilation: int = 1, instance_half: bool = False):
        super().__init__()
        self.conv1 = ConvBNReLU(channels, channels, instance_half=instance_half)
        self.conv2 = nn.Sequential(
            nn.Conv2d(channels, channels, 3, 1, dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.conv2(self.conv1(x)))


class FuseUp(nn.Module):
    """Upsample the coarse map to the skip's size, add the projected skip, refine with a 3x3."""

    def __init__(self, coarse: int, skip: int, out: int):
        super().__init__()
        self.project_coarse = ConvBNReLU(coarse, out, kernel=1)
        self.project_skip = ConvBNReLU(skip, out, kernel=1)
        self.refine = ConvBNReLU(out, out)

    def forward(self, coarse: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(self.project_coarse(coarse), size=skip.shape[-2:], mode="bilinear",
                           align_corners=False)
        return self.refine(up + self.project_skip(skip))


class WindowedAverage(nn.Module):
    """The mean over a window of `cells` (rows, cols) around each position, where the window
    lies on the map (borders average what exists): a context vector per position.

    A network trained on crops learnt its context vector from a crop's worth of scene; pooled
    over a whole frame at inference it sees other statistics (measured on a drive never seen:
    road IoU 91.5 % with crop-sized windows, 78.3 % pooled over the frame; docs/model-history.md,
    session 22), as DeepLab's image pooling does when trained on crops. Two separable passes,
    exact for a mean over a rectangle of valid cells, and cheap at 1/16 resolution.
    """

    def __init__(self, cells: tuple[int, int]):
        super().__init__()
        rows, cols = cells
        if rows < 1 or cols < 1:
            raise ValueError(f"a context window of {rows}x{cols} cells; both must be at least 1")
        self.down = nn.AvgPool2d((rows, 1), stride=1, padding=(rows // 2, 0), count_include_pad=False)
        self.across = nn.AvgPool2d((1, cols), stride=1, padding=(0, cols // 2), count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # An even window gives one position more than the map; the last one is dropped.
        return self.across(self.down(x))[..., :x.shape[-2], :x.shape[-1]]


def context_pool(crop: tuple[int, int] | None, stride: int) -> nn.Module:
    """The pooling of a context vector: over the whole map (crop None), or over windows of a
    `crop` of input pixels on a map `stride` times smaller."""
    if crop is None:
        return nn.AdaptiveAvgPool2d(1)
    return WindowedAverage((max(1, round(crop[0] / stride)), max(1, round(crop[1] / stride))))


def check_context_window(window: tuple[int, int]) -> None:
    """Raise ValueError (one line) for a context window smaller than one 1/16 cell."""
    if min(window) < CONTEXT_STRIDE:
        raise ValueError(f"{window[0]}x{window[1]} input pixels; each must be at least "
                         f"{CONTEXT_STRIDE} (one cell of the 1/16 context map)")


class RoadSegNet(nn.Module):
    """Encoder-decoder network; forward returns logits at 1/4 resolution (plus aux in training)."""

    def __init__(self, config: NetConfig = NetConfig()):
        super().__init__()
        self.config = config
        w1, w2, w3, w4 = config.widths
        b2, b3, b4 = config.blocks
        unknown = set(config.instance_norm) - set(IBN_STAGES)
        if unknown:
            raise ValueError(f"instance norm in {sorted(unknown)}: it goes in {', '.join(IBN_STAGES)}")
        ibn = {stage: stage in config.instance_norm for stage in IBN_STAGES}
        self.stem = nn.Sequential(ConvBNReLU(3, w1, stride=2, instance_half=ibn["stem"]),
                                  ConvBNReLU(w1, w2, stride=2, instance_half=ibn["stem"]))
        self.stage4 = nn.Sequential(*[ResidualBlock(w2, instance_half=ibn["stage4"]) for _ in range(b2)])
        self.stage8 = nn.Sequential(ConvBNReLU(w2, w3, stride=2, instance_half=ibn["stage8"]),
                                    *[ResidualBlock(w3, instance_half=ibn["stage8"]) for _ in range(b3)])
        dilations = [1, 2, 4, 8][:b4]
        self.stage16 = nn.Sequential(ConvBNReLU(w3, w4, stride=2),
                                     *[ResidualBlock(w4, d) for d in dilations])
        self.global_context = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(w4, w4, 1),
                                            nn.ReLU(inplace=True))
        self.up8 = FuseUp(w4, w3, w3)
        self.up4 = FuseUp(w3, w2, w2)
        self.classifier = nn.Conv2d(w2, config.num_classes, 1)
        self.aux8 = nn.Sequential(ConvBNReLU(w3, w3), nn.Conv2d(w3, config.num_classes, 1))
        self.aux16 = nn.Sequential(ConvBNReLU(w4, w4), nn.Conv2d(w4, config.num_classes, 1))

    def pool_context_over(self, crop: tuple[int, int] | None) -> RoadSegNet:
        """Pool the context vector over windows the size of a `crop` (input pixels) around each
        position instead of over the whole input (None: the whole input, as trained). The
        weights are untouched, so any checkpoint takes either; returns self."""
        self.global_context[0] = context_pool(crop, CONTEXT_STRIDE)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f4 = self.stage4(self.stem(x))
        f8 = self.stage8(f4)
        f16 = self.stage16(f8)
        f16 = f16 + self.global_context(f16)
        d8 = self.up8(f16, f8)
        d4 = self.up4(d8, f4)
        logits = self.classifier(d4)
        if self.training:
            return logits, self.aux8(d8), self.aux16(f16)
        return logits


# EfficientNet-Lite0's inverted-residual stages: (expansion, kernel, stride, out channels, repeats).
LITE0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
                (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
LITE0_BN_EPS = 1e-3  # TensorFlow's, which the ImageNet statistics were gathered with
# EfficientNet-Lite's compound scaling, (width, depth) by variant (Google's efficientnet_lite_builder).
LITE_SCALING = {"lite0": (1.0, 1.0), "lite1": (1.0, 1.1), "lite2": (1.1, 1.2)}
# Which of the seven stages feed each of the encoder's modules (stem takes stage 0 as well).
LITE_MODULE_STAGES = {"stem": (0,), "stage4": (1,), "stage8": (2,), "stage16": (3, 4), "stage32": (5, 6)}


def lite_stages(variant: str) -> tuple[tuple[int, int, int, int, int], ...]:
    """A variant's stages as LITE0_STAGES lists them: channels scaled by its width and rounded to
    multiples of 8 (never below 90 % of the scaled count), repeats by its depth, rounded up; the
    Lite variants keep the first and last stage's single block and the 32-channel stem."""
    width, depth = LITE_SCALING[variant]
    stages = []
    for index, (expansion, kernel, stride, channels, repeats) in enumerate(LITE0_STAGES):
        scaled = channels * width
        rounded = max(8, int(scaled + 4) // 8 * 8)
        rounded += 8 if rounded < 0.9 * scaled else 0
        if index not in (0, len(LITE0_STAGES) - 1):
            repeats = math.ceil(repeats * depth)
        stages.append((expansion, kernel, stride, rounded, repeats))
    return tuple(stages)


@dataclass(frozen=True)
class LiteConfig:
    """RoadSegNet-liteN's shape: the EfficientNet-Lite variant (which fixes the encoder) and the
    classes. The decoder is the same for every variant."""

    num_classes: int = 12
    variant: str = "lite0"

    @property
    def widths(self) -> tuple[int, ...]:
        """Encoder widths at 1/2, 1/4, 1/8, 1/16 and 1/32, as NetConfig names them."""
        stages = lite_stages(self.variant)
        return tuple(stages[indices[-1]][3] for indices in LITE_MODULE_STAGES.values())

    @property
    def blocks(self) -> tuple[int, ...]:
        """Inverted-residual blocks in each of those five modules."""
        stages = lite_stages(self.variant)
        return tuple(sum(stages[i][4] for i in indices) for indices in LITE_MODULE_STAGES.values())


class InvertedResidual(nn.Module):
    """MobileNetV2's block as EfficientNet-Lite has it: 1x1 expansion, depthwise kxk, 1x1
    projection, ReLU6, a shortcut where the shape is kept."""

    def __init__(self, cin: int, expansion: int, kernel: int, stride: int, cout: int):
        super().__init__()
        mid = cin * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid, eps=LITE0_BN_EPS),
                       nn.ReLU6(inplace=True)]
        layers += [nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False),
                   nn.BatchNorm2d(mid, eps=LITE0_BN_EPS), nn.ReLU6(inplace=True),
                   nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout, eps=LITE0_BN_EPS)]
        self.body = nn.Sequential(*layers)
        self.shortcut = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.shortcut else self.body(x)


class LiteSegNet(nn.Module):
    """EfficientNet-Lite's encoder (to 1/32) with RoadSegNet's context vector and U-shaped
    decoder; forward returns logits at 1/4 resolution (plus aux at 1/8 and 1/16 in training).
    The encoder's modules are stem (1/2), stage4, stage8, stage16, stage32, in the order of
    EfficientNet-Lite's own layers, so ImageNet weights map onto them one to one."""

    context_stride = 32

    def __init__(self, config: LiteConfig = LiteConfig()):
        super().__init__()
        self.config = config
        stages, cin = lite_stages(config.variant), 32
        modules: dict[str, list[nn.Module]] = {}
        for name, indices in LITE_MODULE_STAGES.items():
            modules[name] = []
            for expansion, kernel, stride, cout, repeats in (stages[i] for i in indices):
                for index in range(repeats):
                    modules[name].append(InvertedResidual(cin, expansion, kernel,
                                                          stride if index == 0 else 1, cout))
                    cin = cout
        _, w4, w8, w16, w32 = config.widths
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False),
                                  nn.BatchNorm2d(32, eps=LITE0_BN_EPS), nn.ReLU6(inplace=True),
                                  *modules["stem"])
        self.stage4 = nn.Sequential(*modules["stage4"])
        self.stage8 = nn.Sequential(*modules["stage8"])
        self.stage16 = nn.Sequential(*modules["stage16"])
        self.stage32 = nn.Sequential(*modules["stage32"])
        self.global_context = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(w32, w32, 1),
                                            nn.ReLU(inplace=True))
        self.up16 = FuseUp(w32, w16, 96)
        self.up8 = FuseUp(96, w8, 64)
        self.up4 = FuseUp(64, w4, 32)
        self.classifier = nn.Conv2d(32, config.num_classes, 1)
        self.aux8 = nn.Sequential(ConvBNReLU(64, 64), nn.Conv2d(64, config.num_classes, 1))
        self.aux16 = nn.Sequential(ConvBNReLU(96, 96), nn.Conv2d(96, config.num_classes, 1))

    def pool_context_over(self, crop: tuple[int, int] | None) -> LiteSegNet:
        """As RoadSegNet.pool_context_over, on the 1/32 map."""
        self.global_context[0] = context_pool(crop, self.context_stride)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f4 = self.stage4(self.stem(x))
        f8 = self.stage8(f4)
        f16 = self.stage16(f8)
        f32 = self.stage32(f16)
        f32 = f32 + self.global_context(f32)
        d16 = self.up16(f32, f16)
        d8 = self.up8(d16, f8)
        d4 = self.up4(d8, f4)
        logits = self.classifier(d4)
        if self.training:
            return logits, self.aux8(d8), self.aux16(d16)
        return logits


# Networks whose encoder is another's design, by model size.
PRETRAINABLE = tuple(LITE_SCALING)


def build_model(name: str = "base", num_classes: int = 11,
                instance_norm: tuple[str, ...] = ()) -> RoadSegNet | LiteSegNet:
    """Build a RoadSegNet of a named size from CONFIGS (with HalfInstanceNorm in the stages
    named by `instance_norm`), or RoadSegNet-lite0/1/2."""
    if name in LITE_SCALING:
        if instance_norm:
            raise ValueError(f"RoadSegNet-{name} takes no --instance-norm (its encoder is EfficientNet-Lite's)")
        return LiteSegNet(LiteConfig(num_classes=num_classes, variant=name))
    if name not in CONFIGS:
        raise ValueError(f"unknown model size {name!r}; choose one of {sorted(CONFIGS) + list(PRETRAINABLE)}")
    base = CONFIGS[name]
    return RoadSegNet(NetConfig(widths=base.widths, blocks=base.blocks, num_classes=num_classes,
                                instance_norm=tuple(instance_norm)))


def fit_batchnorm_state(net: RoadSegNet, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict of the same network with BatchNorm everywhere, rewritten to load strictly
    into `net`, whose HalfInstanceNorms stand where some of those BatchNorms were: each one's
    BatchNorm half keeps its channels' statistics and scale, its instance half their scale and
    shift (a warm start; everything else is copied as it is)."""
    fitted = dict(state)
    for name, module in net.named_modules():
        if not isinstance(module, HalfInstanceNorm) or f"{name}.weight" not in state:
            continue
        half = module.split
        for key in ("weight", "bias"):
            value = fitted.pop(f"{name}.{key}")
            fitted[f"{name}.instance.{key}"] = value[:half].clone()
            fitted[f"{name}.batch.{key}"] = value[half:].clone()
        for key in ("running_mean", "running_var"):
            fitted[f"{name}.batch.{key}"] = fitted.pop(f"{name}.{key}")[half:].clone()
        fitted[f"{name}.batch.num_batches_tracked"] = fitted.pop(f"{name}.num_batches_tracked")
    return fitted


def count_parameters(model: nn.Module, include_aux: bool = False) -> int:
    """Parameters used at inference (auxiliary heads excluded unless asked)."""
    return sum(p.numel() for n, p in model.named_parameters()
               if include_aux or not n.startswith(("aux8", "aux16")))


def count_flops(model: nn.Module, height: int = 360, width: int = 480) -> int:
    """Floating-point operations of one inference forward pass (2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, height, width))
    model.train(was_training)
    return int(counter.get_total_flops())
