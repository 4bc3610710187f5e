"""A small resumable checkpoint: a long run carried to another machine through the repository.

    python -m training.compact runs/lite0-trainval-160/last.pt training/checkpoints/run.resume.pt
    python -m training.train ... --resume training/checkpoints/run.resume.pt   # same options

A full `last.pt` holds the weights, both AdamW moments and the weight average, all float32: about
17 bytes a parameter (54 MB for RoadSegNet-lite0), too large to commit. The compact form keeps
what the schedule needs to go on: the weights and AdamW's second moment (its memory is about
1000 steps, the one that would take epochs to rebuild) in bfloat16, the step counts, the learning
rate curve's position, the random generators and the arguments. Left out, and rebuilt on resume:
AdamW's first moment (restarts at zero; its memory is about 10 steps) and the weight average
(restarts from the weights at the first step; `--ema 0.99` forgets in about 100 steps). Rounding
the weights to bfloat16 moves each by at most 0.4 % of its size, once. So a resumed run is close
to, not bit-equal with, one that never stopped.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from engines.checkpoint import CheckpointError, read_checkpoint
from engines.tool import run_tool


def _bf16(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to(torch.bfloat16) if tensor.is_floating_point() else tensor


def compact_checkpoint(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The compact form of a training checkpoint (see the module's docstring)."""
    optimizer = checkpoint["optimizer"]
    state = {index: {"step": moments["step"], "exp_avg_sq": _bf16(moments["exp_avg_sq"])}
             for index, moments in optimizer["state"].items()}
    small = {key: value for key, value in checkpoint.items() if key not in ("ema", "swa")}
    small["model"] = {key: _bf16(value) for key, value in checkpoint["model"].items()}
    small["optimizer"] = {"state": state, "param_groups": optimizer["param_groups"]}
    small["compact"] = True
    return small


def expand_optimizer_state(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The AdamW state dict of a compact checkpoint, its first moments restarted at zero (the
    optimizer casts the rest back to the parameters' float32 as it loads)."""
    optimizer = checkpoint["optimizer"]
    if not checkpoint.get("compact"):
        return optimizer
    state = {index: {**moments, "exp_avg": torch.zeros_like(moments["exp_avg_sq"])}
             for index, moments in optimizer["state"].items()}
    return {"state": state, "param_groups": optimizer["param_groups"]}


def main(args: argparse.Namespace) -> int:
    try:
        checkpoint = read_checkpoint(args.checkpoint, "cpu")
    except CheckpointError as error:
        print(f"error: {error}")
        return 2
    if "optimizer" not in checkpoint or checkpoint.get("compact"):
        print(f"error: {args.checkpoint} holds no full optimizer state; compact the last.pt of a "
              "training run")
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.name + ".partial")
    torch.save(compact_checkpoint(checkpoint), partial)
    partial.replace(args.out)  # never a truncated file where a run will look for one
    megabytes = args.out.stat().st_size / 1e6
    print(f"wrote {args.out} ({megabytes:.1f} MB, epoch {checkpoint['epoch'] + 1} of "
          f"{checkpoint['args']['epochs']}); resume with the run's own options and --resume {args.out}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="a training run's last.pt")
    parser.add_argument("out", type=Path)
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(run_tool(main, parse_args()))
