"""Load and validate an ONNX model, then import it into Relax at fixed batch sizes."""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError

MAX_INPUT_ELEMENTS = 1 << 26  # per sample (256 MiB of float32): beyond any CNN we compile
MAX_CALL_ELEMENTS = 1 << 28   # a batch entry's input (1 GiB of float32)
CHECKPOINT_KEY = "tvmcomp.checkpoint"  # metadata: the PyTorch checkpoint (``tvmcomp export``)
_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 10: "float16"}


@dataclass(frozen=True)
class ModelInfo:
    """What we know about an ONNX model before compiling it."""

    path: str
    sha256: str
    name: str
    input_name: str
    input_shape: tuple  # batch dimension may be a str (symbolic) or int
    input_dtype: str
    output_name: str
    opset: int
    op_types: tuple[str, ...]
    metadata: dict

    @property
    def dynamic_batch(self) -> bool:
        return not isinstance(self.input_shape[0], int)

    def check_batch(self, batch: int) -> None:
        if batch < 1:
            raise ModelError(f"batch size must be >= 1, got {batch}")
        if not self.dynamic_batch and self.input_shape[0] != batch:
            raise ModelError(
                f"{self.path}: input {self.input_name!r} has a fixed batch of "
                f"{self.input_shape[0]}; cannot build batch {batch} (export with a dynamic batch)"
            )
        n = batch * math.prod(self.input_shape[1:])
        if n > MAX_CALL_ELEMENTS:
            raise ModelError(
                f"{self.path}: input {self.input_name!r} at batch {batch} has {n:,} elements, "
                f"more than tvmcomp compiles in one call ({MAX_CALL_ELEMENTS:,}); build a "
                "smaller batch"
                + (" (export the model with a dynamic batch)" if not self.dynamic_batch else "")
            )


def _supported_ops() -> set[str]:
    from tvm.relax.frontend.onnx import onnx_frontend

    return set(onnx_frontend._get_convert_map())


def load_onnx(path: str | os.PathLike):
    """Parse, check and describe an ONNX file; returns ``(onnx.ModelProto, ModelInfo)``.

    Raises :class:`ModelError` with one clear line for a missing, corrupt or truncated file,
    a graph that fails the ONNX checker, more than one input, or an op the Relax frontend
    cannot import (naming the op and the node).
    """
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"ONNX model not found: {path}")
    data = path.read_bytes()
    if not data:
        raise ModelError(f"{path}: empty file, not an ONNX model")
    try:
        model = onnx.load_from_string(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise ModelError(f"{path}: corrupt or truncated ONNX file ({type(e).__name__})") from None
    if not model.graph.node:
        raise ModelError(f"{path}: not an ONNX model (no graph nodes)")
    newest = onnx.defs.onnx_opset_version()
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset > newest:  # the checker lets it pass; ONNX Runtime's verification would not
        raise ModelError(f"{path}: ONNX opset {opset} is newer than the newest this tvmcomp "
                         f"knows ({newest}); export the model with opset {newest} or lower")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0]
        raise ModelError(f"{path}: invalid ONNX model: {first}") from None

    supported = _supported_ops()
    for i, node in enumerate(model.graph.node):
        if node.domain not in ("", "ai.onnx"):
            raise ModelError(
                f"{path}: unsupported op {node.domain}::{node.op_type} at node "
                f"{node.name or '#' + str(i)!r} (custom domains are not supported)"
            )
        if node.op_type not in supported:
            raise ModelError(
                f"{path}: unsupported op {node.op_type!r} at node {node.name or '#' + str(i)!r}"
            )

    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise ModelError(
            f"{path}: expected one input and one output, got {len(inputs)} and "
            f"{len(model.graph.output)}"
        )
    inp = inputs[0]
    ttype = inp.type.tensor_type
    shape = tuple(
        d.dim_value if d.HasField("dim_value") else (d.dim_param or "N")
        for d in ttype.shape.dim
    )
    if any(not isinstance(d, int) for d in shape[1:]):
        raise ModelError(f"{path}: input {inp.name!r} has symbolic non-batch dims {shape}")
    per_sample = math.prod(shape[1:])
    if per_sample > MAX_INPUT_ELEMENTS:
        raise ModelError(f"{path}: input {inp.name!r} {list(shape)} has {per_sample:,} elements "
                         f"per sample, more than tvmcomp compiles ({MAX_INPUT_ELEMENTS:,})")
    dtype = _ONNX_DTYPES.get(ttype.elem_type)
    if dtype is None:
        raise ModelError(f"{path}: input {inp.name!r} has unsupported element type {ttype.elem_type}")
    info = ModelInfo(
        path=str(path.resolve()), sha256=hashlib.sha256(data).hexdigest(),
        name=model.graph.name or path.stem, input_name=inp.name, input_shape=shape,
        input_dtype=dtype, output_name=model.graph.output[0].name, opset=opset,
        op_types=tuple(sorted({n.op_type for n in model.graph.node})),
        metadata={p.key: p.value for p in model.metadata_props},
    )
    return model, info


def import_onnx(model, info: ModelInfo, batch: int):
    """Import ``model`` into Relax with the batch dimension fixed to ``batch``."""
    from tvm.relax.frontend.onnx import from_onnx

    info.check_batch(batch)
    shape = [batch, *info.input_shape[1:]]
    try:
        return from_onnx(model, shape_dict={info.input_name: shape},
                         dtype_dict={info.input_name: info.input_dtype})
    except Exception as e:  # the frontend raises bare TVM errors on unsupported attributes
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ModelError(f"{info.path}: Relax ONNX import failed: {msg}") from None


def entry_name(batch: int) -> str:
    """The VM function that runs a batch of ``batch`` inputs."""
    return f"main_b{batch}"


def import_batches(model, info: ModelInfo, batches: list[int]):
    """One IRModule with a function ``main_b<N>`` per batch size (weights shared in the .so)."""
    import tvm
    from tvm import relax

    if not batches:
        raise ModelError("no batch sizes given")
    merged = tvm.IRModule()
    for b in sorted(set(batches)):
        mod = import_onnx(model, info, b)
        # The frontend may also emit helper PrimFuncs (e.g. for Clip) that "main" calls: keep
        # them, renamed per batch so that the batch sizes' functions do not collide.
        rename = {gv: tvm.ir.GlobalVar(f"{gv.name_hint}_b{b}")
                  for gv in mod.get_global_vars() if gv.name_hint != "main"}
        for gv, new_gv in rename.items():
            relax.expr._update_type(new_gv, gv.ty)
            merged[new_gv] = mod[gv]
        func = _rename_globals(mod["main"], rename) if rename else mod["main"]
        merged[entry_name(b)] = func.with_attr("global_symbol", entry_name(b))
    return merged


def _rename_globals(func, mapping: dict):
    """``func`` with its references to the GlobalVars in ``mapping`` replaced."""
    from tvm import relax

    @relax.expr_functor.mutator
    class RenameGlobals(relax.PyExprMutator):
        def visit_global_var_(self, op):
            return mapping.get(op, op)

    return RenameGlobals().visit_expr(func)
