"""Per-layer size accounting (Deep Compression's table): the form each conv/matmul weight
takes in the artifact and the bytes it stores, by role.

Computed with the same layout builders the passes use, on the module before ``layer_forms``
(after ``quantize``), so it can be reported before anything is compiled. Batch entries that
share a layer's weight share its stored arrays: each layer is counted once.
"""

from __future__ import annotations

import numpy as np

from ..kernels.codebook import DECODE_BLOCK, code_bits
from ..kernels.sparse_conv import sparse_conv_from_dense
from .codebook_dense import codebook_layers
from .layers import layer_key
from .sparse_dense import goes_sparse, layer_weights, rewritable_layers, sliced_layout

ROLES = ("values", "col_indices", "structure", "codebook")
# a CodebookDense layer's form (codebook_layers) as the table names it
CODEBOOK_FORMS = {"dense": "codebook", "at load": "codebook, decoded at load",
                  "at load, sparse": "sparse codebook, decoded at load",
                  "sparse conv, at load": "sparse conv, codebook decoded at load"}


def layer_sizes(mod, sparse: dict | None = None, codebook: bool = False,
                at_load: tuple[str, ...] = ()) -> list[dict]:
    """One row per conv/matmul layer with a constant weight in ``mod`` (the output of the
    ``quantize`` phase), as ``SparseDense(**sparse)`` (None: off) and ``CodebookDense``
    (``codebook``; ``at_load``: the layers it decodes at load) will store it::

        {"layer": "matmul2", "kind": "matmul", "shape": [120, 400], "weights": 48000,
         "nonzeros": 4310, "form": "sparse codebook", "value_bits": 5,
         "bytes": {"values": ..., "col_indices": ..., "structure": ..., "codebook": ...},
         "stored_bytes": ..., "fp32_bytes": 192000}

    ``values``: the weights, codes or sparse values; ``col_indices``: sparse column steps (a
    layer decoded at load: its code stream's zero-run lengths; a sparse conv: its non-zeros'
    input offsets); ``structure``: slice pointers and row order (a sparse conv: a row pointer
    per output channel); ``codebook``: the codebook. Biases, scales and
    every other constant are not in a layer's row (the artifact's ``weight_bytes`` holds all).
    """
    from tvm import relax

    sparse_args = dict(sparse or {})
    values = sparse_args.get("values", "float32")
    # CodebookDense's layers (SparseDense's sparse matmuls with codes are the sparse rows')
    folded = ({L.key: L for L in codebook_layers(mod, sparse, at_load) if L.form != "sparse"}
              if codebook else {})
    rows: dict[str, dict] = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, relax.Function) or func.attrs and "Primitive" in func.attrs:
            continue
        candidates = {m.name: m for m in rewritable_layers(func, values)}
        for _, name, kind, w in layer_weights(func):
            if name in rows:
                continue  # another batch entry of the same layer: stored once
            key = layer_key(gv.name_hint, name)
            m = candidates.get(name)
            row = {"layer": name, "kind": kind, "shape": [int(d) for d in w.shape],
                   "weights": int(w.size), "nonzeros": int(np.count_nonzero(w)),
                   "fp32_bytes": int(w.size) * 4}
            by = dict.fromkeys(ROLES, 0)
            if key in folded:  # CodebookDense: codes + codebook, in the kernel or at load
                L = folded[key]  # at load: a code stream's codes and zero-run lengths
                by.update(values=L.index_bytes, col_indices=L.structure_bytes,
                          codebook=L.codebook_bytes)
                row.update(form=CODEBOOK_FORMS[L.form], value_bits=code_bits(L.codes))
            elif sparse is not None and m is not None and goes_sparse(
                    key, m.w, sparse_args.get("threshold", 0.0), sparse_args.get("keep") or {}):
                if m.kind == "conv":  # direct sparse convolution: values, offsets, row_ptr
                    c = sparse_conv_from_dense(m.w, m.padded_hw)
                    b = c.nbytes()
                    by.update(values=b["values"], col_indices=b["offsets"],
                              structure=b["row_ptr"])
                    row.update(form=f"sparse conv {c.values.dtype}",
                               value_bits=c.values.dtype.itemsize * 8)
                else:
                    c, form = sliced_layout(m.w, values, m.x_dtype)
                    b = c.nbytes()
                    by.update(values=b["values"], col_indices=b["col_indices"],
                              structure=b["slice_pointers"] + b["row_order"],
                              codebook=b.get("codebook", 0))
                    row.update(form=f"sparse {'codebook' if form == 'codebook' else c.data.dtype}",
                               value_bits=c.code_bits or c.data.dtype.itemsize * 8)
            else:
                by["values"] = int(w.nbytes)
                row.update(form=f"dense {w.dtype}", value_bits=w.dtype.itemsize * 8)
            row["bytes"] = by
            row["stored_bytes"] = sum(by.values())
            rows[name] = row
    return list(rows.values())


def format_layer_sizes(rows: list[dict], weight_bytes: int | None = None) -> str:
    """The rows as a Markdown table, with a total line; ``weight_bytes`` (every constant the
    artifact stores) adds the remainder (biases, scales, ...) and the payload."""
    head = ("| layer | shape | weights | non-zeros | form | bits | values B | indices B | "
            "structure B | codebook B | stored B | vs fp32 |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        b = r["bytes"]
        lines.append(
            f"| {r['layer']} | {'×'.join(map(str, r['shape']))} | {r['weights']:,} | "
            f"{r['nonzeros']:,} | {r['form']} | {r['value_bits']} | {b['values']:,} | "
            f"{b['col_indices']:,} | {b['structure']:,} | {b['codebook']:,} | "
            f"{r['stored_bytes']:,} | {r['fp32_bytes'] / max(1, r['stored_bytes']):.1f}× |")
    stored = sum(r["stored_bytes"] for r in rows)
    fp32 = sum(r["fp32_bytes"] for r in rows)
    lines.append(f"| all layers | | {sum(r['weights'] for r in rows):,} | "
                 f"{sum(r['nonzeros'] for r in rows):,} | | | | | | | {stored:,} | "
                 f"{fp32 / max(1, stored):.1f}× |")
    if weight_bytes is not None:
        lines.append(f"| + biases, scales, other constants | | | | | | | | | | "
                     f"{weight_bytes - stored:,} | |")
        lines.append(f"| weight payload | | | | | | | | | | {weight_bytes:,} | |")
    return "\n".join(lines)


def run_time_memory(lowered, weight_bytes: int, at_load_bytes: int = 0,
                    on_load: str | None = None) -> dict:
    """What a call of each entry point holds in RAM, from the module the VM is built from
    (after the pipeline's ``lower`` phase)::

        {"weights": 64334,                        # constants, loaded once, shared by entries
         "entries": {"main_b64": {"planned": ..., "kernel_scratch": ..., "decoded": ...,
                                  "total": ...}}}

    ``planned``: the VM's statically planned storage (activations) of the entry;
    ``kernel_scratch``: the largest scratch one of its kernels allocates while it runs (the VM
    runs one kernel at a time; an upper bound: code generation may keep small ones on the
    stack); ``decoded``: the largest decoded weight among them (a codebook layer decoded once
    per call into a buffer, rather than inside its loops); ``total``: weights + planned +
    kernel_scratch + ``at_load_bytes`` (the dense weights of the layers decoded once at load,
    held from load on; the function ``on_load`` that decodes them is not an entry).
    """
    import tvm
    from tvm import relax

    scratch: dict[str, tuple[int, int]] = {}  # kernel -> (scratch bytes, decoded bytes)
    for gv, f in lowered.functions.items():
        if isinstance(f, tvm.tirx.PrimFunc):
            scratch[gv.name_hint] = _kernel_scratch(f, DECODE_BLOCK)
    entries = {}
    for gv, f in lowered.functions.items():
        if not isinstance(f, relax.Function) or gv.name_hint == on_load:
            continue
        planned, called = [0], set()

        def visit(e, planned=planned, called=called):
            if not isinstance(e, relax.Call):
                return
            if isinstance(e.op, tvm.ir.GlobalVar):
                called.add(e.op.name_hint)
            elif isinstance(e.op, tvm.ir.Op) and e.op.name == "relax.vm.alloc_storage":
                planned[0] += int(np.prod([int(v) for v in e.args[0].values]))
            for a in e.args:  # call_tir / call_packed name their kernels as arguments
                if isinstance(a, tvm.ir.GlobalVar):
                    called.add(a.name_hint)

        relax.analysis.post_order_visit(f, visit)
        if not planned[0] and not called & set(scratch):
            continue  # a helper with no storage and no kernels
        mine = [scratch[k] for k in called if k in scratch]
        worst = max((s for s, _ in mine), default=0)
        entries[gv.name_hint] = {"planned": planned[0], "kernel_scratch": worst,
                                 "decoded": max((d for _, d in mine), default=0),
                                 "total": weight_bytes + at_load_bytes + planned[0] + worst}
    return {"weights": weight_bytes, "decoded_at_load": at_load_bytes,
            "entries": dict(sorted(entries.items()))}


def _kernel_scratch(func, decoded_name: str) -> tuple[int, int]:
    """(bytes of the buffers ``func`` allocates at its root block, of which those written by
    the block ``decoded_name``: a codebook kernel's decoded weight)."""
    from tvm import s_tir

    try:
        sch = s_tir.Schedule(func)
        bufs = sch.get(sch.get_sblock("root", func_name="main")).alloc_buffers
    except Exception:  # noqa: BLE001 - hand-written kernels without a root block
        return 0, 0
    total = decoded = 0
    for b in bufs:
        n = int(np.prod([int(d) for d in b.shape])) * tvm_dtype_bytes(str(b.dtype))
        total += n
        if str(b.name).startswith(decoded_name + "_"):
            decoded += n
    return total, decoded


def tvm_dtype_bytes(dtype: str) -> int:
    """Bytes of one element of ``dtype`` (``float32`` 4, ``uint8`` 1, ``bool`` 1)."""
    return 1 if dtype == "bool" else max(1, np.dtype(dtype).itemsize)


def format_memory(mem: dict) -> str:
    """One line: RAM per call of each entry point."""
    def kb(n: int) -> str:
        return f"{n / 1024:,.1f} KiB"

    parts = [f"{e} {kb(m['total'])} (activations {kb(m['planned'])}, kernel scratch "
             f"{kb(m['kernel_scratch'])}"
             + (f" incl. decoded weights {kb(m['decoded'])}" if m["decoded"] else "") + ")"
             for e, m in mem["entries"].items()]
    at_load = mem.get("decoded_at_load", 0)
    return (f"RAM per call, with the weights ({kb(mem['weights'])}"
            + (f" and {kb(at_load)} of them decoded at load" if at_load else "") + "): "
            + "; ".join(parts))
