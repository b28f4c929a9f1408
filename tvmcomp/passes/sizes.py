"""Per-layer size accounting (Deep Compression's table): the form each conv/matmul weight
takes in the artifact and the bytes it stores, by role.

Computed with the same layout builders the passes use, on the module before ``layer_forms``
(after ``quantize``), so it can be reported before anything is compiled. Batch entries that
share a layer's weight share its stored arrays: each layer is counted once.
"""

from __future__ import annotations

import numpy as np

from ..kernels.codebook import code_bits
from .codebook_dense import codebook_layers
from .layers import layer_key
from .sparse_dense import goes_sparse, layer_weights, sliced_layout, sparse_candidates

ROLES = ("values", "col_indices", "structure", "codebook")


def layer_sizes(mod, sparse: dict | None = None, codebook: bool = False) -> list[dict]:
    """One row per conv/matmul layer with a constant weight in ``mod`` (the output of the
    ``quantize`` phase), as ``SparseDense(**sparse)`` (None: off) and ``CodebookDense``
    (``codebook``) will store it::

        {"layer": "matmul2", "kind": "matmul", "shape": [120, 400], "weights": 48000,
         "nonzeros": 4310, "form": "sparse codebook", "value_bits": 5,
         "bytes": {"values": ..., "col_indices": ..., "structure": ..., "codebook": ...},
         "stored_bytes": ..., "fp32_bytes": 192000}

    ``values``: the weights, codes or sparse values; ``col_indices``: sparse column steps;
    ``structure``: slice pointers and row order; ``codebook``: the codebook. Biases, scales and
    every other constant are not in a layer's row (the artifact's ``weight_bytes`` holds all).
    """
    from tvm import relax

    sparse_args = dict(sparse or {})
    values = sparse_args.get("values", "float32")
    folded = {L.key: L for L in codebook_layers(mod)} if codebook else {}
    rows: dict[str, dict] = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, relax.Function) or func.attrs and "Primitive" in func.attrs:
            continue
        candidates = {m.name: m for m in sparse_candidates(func)[0]}
        for _, name, kind, w in layer_weights(func):
            if name in rows:
                continue  # another batch entry of the same layer: stored once
            key = layer_key(gv.name_hint, name)
            m = candidates.get(name)
            row = {"layer": name, "kind": kind, "shape": [int(d) for d in w.shape],
                   "weights": int(w.size), "nonzeros": int(np.count_nonzero(w)),
                   "fp32_bytes": int(w.size) * 4}
            by = dict.fromkeys(ROLES, 0)
            if sparse is not None and m is not None and goes_sparse(
                    key, m.w, sparse_args.get("threshold", 0.0), sparse_args.get("keep") or {}):
                c, form = sliced_layout(m.w, values, m.x_dtype)
                b = c.nbytes()
                by.update(values=b["values"], col_indices=b["col_indices"],
                          structure=b["slice_pointers"] + b["row_order"],
                          codebook=b.get("codebook", 0))
                row.update(form=f"sparse {'codebook' if form == 'codebook' else c.data.dtype}",
                           value_bits=c.code_bits or c.data.dtype.itemsize * 8)
            elif key in folded:  # CodebookDense: packed codes + codebook
                L = folded[key]
                by.update(values=L.index_bytes, codebook=L.codebook_bytes)
                row.update(form="codebook", value_bits=code_bits(L.codebook_bytes // 4))
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
