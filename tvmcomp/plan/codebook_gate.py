"""Where each codebook layer decodes, measured (``build --codebook --codebook-decode auto``).

A shared layer can decode its codes inside its kernel, on every call (``model.so`` and RAM
hold only the codes), or once at load into the tensor cache (RAM holds the dense weight; the
layer runs the float model's own kernel). Like the sparse gate, this measures what would
ship: the quantized model is fused twice, every codebook layer decoded in its kernel and
every one decoded at load, both built with the checked tuning records (codebook kernels take
their dense twin's schedule), the two whole models checked to agree, and each layer's
kernels timed alone with its real arguments, the two forms interleaved. A layer decodes at
load where its kernels are slower than the float kernel by more than ``margin``, summed over
the batch entries (a layer's entries share one stored form).
"""

from __future__ import annotations

from dataclasses import dataclass

from .sparse_gate import _dense_calls, time_two_forms, timed_dict


@dataclass(frozen=True)
class DecodeDecision:
    """A codebook layer's timings (median µs of its kernels alone, summed over the batch
    entries, both forms interleaved in one run) and where it decodes."""

    layer: str                      # "conv0", "matmul2", ... (every batch entry)
    kernel_us: float                # its kernels decoding the codes on every call
    load_us: float                  # the float kernels reading the weight decoded at load
    kernels: tuple[str, ...] = ()
    load_kernels: tuple[str, ...] = ()
    at_load: bool = False
    reason: str = ""

    def to_dict(self) -> dict:
        return timed_dict(self)


def forms(quantized, target, layers: tuple[str, ...]):
    """The two fused modules the gate compares: every codebook layer (``layers``, by name)
    decoded in its kernel, and every one decoded at load."""
    from ..pipeline import fuse

    return (fuse(quantized, target, start="layer_forms", codebook=True),
            fuse(quantized, target, start="layer_forms", codebook=True, at_load=layers))


def decode_gate(quantized, target, database, fused, layers: tuple[str, ...], margin: float,
                progress: bool = True, repeat: int | None = None) -> list[DecodeDecision]:
    """Time each codebook layer of ``quantized`` (``layers``, by name) decoding in its kernel
    against decoding at load (``fused``: the two modules of :func:`forms`), one decision per
    layer name."""
    from ..passes.sparse_dense import layer_weights

    names = set(layers)

    def find(fname, func, kernel, load):
        for _, name, _, w in layer_weights(func):
            if name not in names:
                continue
            kc, lc = _dense_calls(kernel.fused[fname], w), _dense_calls(load.fused[fname], w)
            if not kc or not lc:
                raise ValueError(f"{fname}/{name}: cannot find its kernels in the fused "
                                 "modules")
            yield name, kc, lc

    out = []
    for name, (k_us, l_us, kn, ln) in time_two_forms(quantized, target, database, fused,
                                                     "decoding at load", find,
                                                     repeat).items():
        at_load = k_us > l_us * (1.0 + margin)
        why = (f"decoding in its kernels {k_us:.2f} µs vs at load {l_us:.2f} µs: "
               + ("decoded at load" if at_load else
                  f"within {margin:.0%}, decoded in its kernels (RAM keeps only the codes)"))
        out.append(DecodeDecision(name, k_us, l_us, kn, ln, at_load, why))
        if progress:
            print(f"codebook decode {name}: {why}", flush=True)
    return out
