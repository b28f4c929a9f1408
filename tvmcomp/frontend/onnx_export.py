"""Export a PyTorch model to ONNX (static or batch-dynamic)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def export_onnx(model: nn.Module, path: str | os.PathLike, input_shape=(1, 1, 28, 28),
                dynamic_batch: bool = True, opset: int = 17,
                metadata: dict[str, str] | None = None) -> Path:
    """Write ``model`` as ONNX; with ``dynamic_batch`` the batch dimension is symbolic ``N``.

    ``metadata`` goes into the model's ``metadata_props`` (``tvmcomp export`` records the
    source checkpoint there so that benchmarks can time the PyTorch original).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    dummy = torch.zeros(*input_shape, dtype=torch.float32)
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.onnx.export(
            model, (dummy,), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}} if dynamic_batch else None,
            opset_version=opset, dynamo=False,
        )
        if metadata:
            import onnx

            proto = onnx.load(str(tmp))
            for key, value in metadata.items():
                entry = proto.metadata_props.add()
                entry.key, entry.value = key, str(value)
            onnx.save(proto, str(tmp))
        os.replace(tmp, path)
    finally:  # a failed or interrupted export leaves nothing behind
        tmp.unlink(missing_ok=True)
    return path
