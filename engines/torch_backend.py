"""PyTorch backend for the project's `.pt` training checkpoints (CPU or CUDA).

On CUDA it runs the contract wrapper (uint8 BGR in, class ids out, so preprocessing happens on
the GPU) in fp16 or bf16 with channels-last memory, and replays a CUDA graph per batch size so
that Python launches one graph instead of ~60 kernels per frame.

torch is imported inside the engine, not at module level, so that the registry can read this
backend's declaration on a machine without PyTorch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engines.base import Backend, ClosingEngine, EngineError, EngineInfo

if TYPE_CHECKING:
    import torch

PRECISIONS = ("fp32", "fp16", "bf16")


class TorchEngine(ClosingEngine):
    """Loads a checkpoint written by training.train and serves the Engine interface.

    The class table and input size come from the checkpoint (`labels` overrides the classes).
    """

    def __init__(self, path: Path, labels: dict[str, Any] | None = None, device: str = "auto",
                 precision: str = "auto", threads: int | None = None, cuda_graphs: bool = True):
        import torch

        from engines.checkpoint import (CheckpointError, checkpoint_classes, checkpoint_input_size,
                                        load_checkpoint_model)
        from engines.contract_wrapper import ContractWrapper

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise EngineError("--device cuda: PyTorch sees no CUDA GPU here; use --device cpu")
        if precision == "auto":
            precision = "fp16" if device.startswith("cuda") else "fp32"
        if precision not in PRECISIONS:
            raise EngineError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        if device == "cpu" and precision != "fp32":
            raise EngineError("reduced precision needs a GPU for the PyTorch backend; use fp32 on CPU")
        if threads:
            torch.set_num_threads(threads)
        try:
            net, checkpoint = load_checkpoint_model(path)
        except CheckpointError as error:
            raise EngineError(str(error)) from None
        self.device = torch.device(device)
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        self.model = ContractWrapper(net).eval().to(self.device)
        if self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        classes = labels["classes"] if labels else checkpoint_classes(checkpoint)
        height, width = checkpoint_input_size(checkpoint)
        self.info = EngineInfo(
            path=Path(path), backend="torch", precision=precision, input_height=height,
            input_width=width, classes=classes, device=str(self.device),
            details={"epoch": checkpoint.get("epoch"), "cuda_graphs": self.cuda_graphs})

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        import torch

        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            return self.model(batch)

    def _graph_for(self, batch_size: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]:
        """Capture the forward pass once per batch size (shapes are static within it)."""
        import torch

        if batch_size not in self._graphs:
            height, width = self.info.input_size
            static_in = torch.zeros((batch_size, height, width, 3), dtype=torch.uint8, device=self.device)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), torch.inference_mode():
                for _ in range(3):  # warm-up on a side stream, as CUDA graph capture requires
                    self._forward(static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), torch.inference_mode():
                static_out = self._forward(static_in)
            self._graphs[batch_size] = (graph, static_in, static_out)
        return self._graphs[batch_size]

    def infer(self, images: np.ndarray) -> np.ndarray:
        """uint8 BGR [N, H, W, 3] → uint8 class ids [N, H, W]."""
        import torch

        host = torch.from_numpy(np.ascontiguousarray(images))
        if self.cuda_graphs and images.shape[1:3] == self.info.input_size:
            graph, static_in, static_out = self._graph_for(len(images))
            static_in.copy_(host, non_blocking=True)
            graph.replay()
            return static_out.cpu().numpy()
        with torch.inference_mode():
            return self._forward(host.to(self.device, non_blocking=True)).cpu().numpy()

    def close(self) -> None:
        self._graphs.clear()
        self.model = None


def open_engine(path: Path, labels: dict | None, **options: Any) -> TorchEngine:
    try:
        import torch  # noqa: F401 - only to turn a missing PyTorch into one clear line
    except ImportError as error:
        raise EngineError(f"{path}: the PyTorch backend needs torch ({error}); install it with "
                          "pip install -e \".[train]\"") from None
    return TorchEngine(path, labels=labels, **options)


BACKEND = Backend(
    name="torch", suffixes=(".pt", ".pth"), precisions=PRECISIONS, parallel_calls=False,
    options=("device", "precision", "threads", "cuda_graphs"), open=open_engine,
    precision_hint="the PyTorch backend runs fp32 on CPU, fp16/bf16 on CUDA")
