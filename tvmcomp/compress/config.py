"""Pruning configs: frozen dataclasses named after the scheme, with a versioned JSON form."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields

from ..defaults import (DEFAULT_FINETUNE_EPOCHS, DEFAULT_FINETUNE_LR,
                        DEFAULT_LOWRANK_EPOCHS, DEFAULT_LOWRANK_LR)
from ..errors import reject_unknown
from .errors import CompressConfigError

CONFIG_FORMAT = "tvmcomp.compress"
CONFIG_VERSION = 1
SCOPES = ("global", "layer")


def _num(name: str, v, lo: float, hi: float, lo_open=False, hi_open=False) -> None:
    bad = isinstance(v, bool) or not isinstance(v, (int, float)) or v != v
    if not bad:
        bad = (v <= lo if lo_open else v < lo) or (v >= hi if hi_open else v > hi)
    if bad:
        lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"
        raise CompressConfigError(f"{name} must be a number in {lb}{lo}, {hi}{rb}, got {v!r}")


def _int(name: str, v, lo: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise CompressConfigError(f"{name} must be an integer >= {lo}, got {v!r}")


def _names(name: str, v) -> tuple[str, ...]:
    if isinstance(v, str) or not all(isinstance(s, str) and s for s in v):
        raise CompressConfigError(f"{name} must be a list of layer names, got {v!r}")
    return tuple(v)


@dataclass(frozen=True)
class L1:
    """Sparse regularization: ``strength * Σ|w|`` over the pruned weights, added to the loss."""

    strength: float = 1e-5
    method = "l1"

    def __post_init__(self) -> None:
        _num("L1 strength", self.strength, 0.0, 1.0, lo_open=True)

    def params(self) -> dict:
        return {"strength": self.strength}


@dataclass(frozen=True)
class GroupLasso:
    """Block-structured sparse regularization: ``strength * Σ_blocks √|block| · ‖block‖₂``.

    ``block`` is (rows, cols) of the 2-D weight view ``[out, in·kh·kw]``; e.g. (1, 4) drives
    runs of 4 input weights of one output to zero together (what a block-sparse kernel wants).
    Pruning with the same ``block`` then removes whole blocks.
    """

    strength: float = 1e-4
    block: tuple[int, int] = (1, 4)
    method = "group_lasso"

    def __post_init__(self) -> None:
        _num("GroupLasso strength", self.strength, 0.0, 1.0, lo_open=True)
        b = tuple(self.block)
        if len(b) != 2:
            raise CompressConfigError(f"GroupLasso block must be (rows, cols), got {self.block!r}")
        for v in b:
            _int("GroupLasso block size", v, 1)
        object.__setattr__(self, "block", b)

    def params(self) -> dict:
        return {"strength": self.strength, "block": list(self.block)}


REGULARIZERS = {r.method: r for r in (L1, GroupLasso)}


@dataclass(frozen=True)
class FineTune:
    """Iterative pruning + fine-tuning: the sparsity ramps up on a polynomial-decay schedule.

    Over the first ``ramp`` fraction of the ``epochs·steps_per_epoch`` steps, sparsity at step
    ``t`` is ``s_f · (1 − (1 − t/T)^power)`` (Zhu & Gupta 2017), re-pruned ``prunes`` times;
    the rest of the steps fine-tune at the final sparsity. Masks are enforced after every
    optimizer step, so pruned weights stay exactly zero. ``epochs=0`` prunes once (one shot).

    Defaults from ``scripts/prune_defaults.py`` (LeNet-5, 10k MNIST test set, Zen 5,
    2026-12-06): at 90 % sparsity 24 epochs at lr 5e-3 gave +0.27 pt against the float model,
    the former 8 epochs at 1e-3 -0.90 pt; at 95 %, -0.04 against -2.73 pt.
    """

    epochs: int = DEFAULT_FINETUNE_EPOCHS
    lr: float = DEFAULT_FINETUNE_LR
    batch_size: int = 64
    prunes: int = 10
    power: float = 3.0
    ramp: float = 0.5
    shift: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        _int("epochs", self.epochs, 0)
        _num("lr", self.lr, 0.0, 1.0, lo_open=True)
        _int("batch_size", self.batch_size, 1)
        _int("prunes", self.prunes, 1)
        _num("power", self.power, 0.0, 10.0, lo_open=True)
        _num("ramp", self.ramp, 0.0, 1.0, lo_open=True)
        _int("shift", self.shift, 0)
        _int("seed", self.seed, 0)

    def params(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class MagnitudePruneConfig:
    """Zero the smallest-magnitude weights until ``sparsity`` of them are zero.

    Parameters
    ----------
    sparsity : float
        Target fraction of zero weights, in [0, 1).
    scope : str
        ``"global"``: one magnitude threshold over all pruned layers (the overall sparsity is
        ``sparsity``); ``"layer"``: each pruned layer gets ``sparsity`` on its own.
    layers : tuple[str, ...]
        Module names to prune (e.g. ``("fc1", "fc2")``); empty = every Conv/Linear weight.
    exclude : tuple[str, ...]
        Module names never pruned.
    block : tuple[int, int]
        Prune whole (rows, cols) blocks of the ``[out, in·kh·kw]`` view by their L2 norm.
    finetune : FineTune | None
        Iterative schedule + fine-tuning; None prunes once without training.
    regularizer : L1 | GroupLasso | None
        Added to the loss while fine-tuning.
    per_layer : dict[str, float]
        Scope ``"layer"`` only: sparsity of the named layers (others get ``sparsity``).
    """

    sparsity: float = 0.9
    scope: str = "global"
    per_layer: dict = field(default_factory=dict)
    layers: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    block: tuple[int, int] = (1, 1)
    finetune: FineTune | None = field(default_factory=FineTune)
    regularizer: L1 | GroupLasso | None = None
    method = "magnitude"

    def __post_init__(self) -> None:
        _num("sparsity", self.sparsity, 0.0, 1.0, hi_open=True)
        if self.scope not in SCOPES:
            raise CompressConfigError(f"scope must be one of {', '.join(SCOPES)}, "
                                      f"got {self.scope!r}")
        if not isinstance(self.per_layer, dict):
            raise CompressConfigError(f"per_layer must map layer names to sparsities, "
                                      f"got {self.per_layer!r}")
        if self.per_layer and self.scope != "layer":
            raise CompressConfigError("per_layer sparsities need scope='layer'")
        for name, v in self.per_layer.items():
            _names("per_layer", (name,))
            _num(f"sparsity of {name}", v, 0.0, 1.0, hi_open=True)
        _common(self)

    def __hash__(self) -> int:
        return hash((self.sparsity, self.scope, tuple(sorted(self.per_layer.items())),
                     self.layers, self.exclude, self.block, self.finetune, self.regularizer))

    @classmethod
    def of_layers(cls, sparsities: dict[str, float], **kw) -> MagnitudePruneConfig:
        """Prune exactly the named layers, each to its own sparsity (``--prune
        NAME=S,...``); ``kw``: the other fields."""
        return cls(0.0, scope="layer", per_layer=dict(sparsities), layers=tuple(sparsities),
                   **kw)

    def sparsity_for(self, names) -> float | dict[str, float]:
        """What the mask functions take: one float, or a per-layer dict for scope "layer"."""
        if self.scope == "layer" and self.per_layer:
            return {n: float(self.per_layer.get(n, self.sparsity)) for n in names}
        return self.sparsity

    def params(self) -> dict:
        return {"sparsity": self.sparsity, "scope": self.scope,
                "per_layer": dict(self.per_layer)}


@dataclass(frozen=True)
class SensitivityConfig:
    """Per-layer sparsity from a sensitivity sweep under an accuracy budget, then prune.

    Each layer alone is pruned (magnitude, one shot) at every value of ``sparsities`` and the
    accuracy drop on a held-out ``val_fraction`` of the training data is measured. Each layer
    then gets the largest swept sparsity up to which every drop is ``<= max_accuracy_drop``
    (a fraction: 0.005 = 0.5 points), and the model is pruned to those per-layer targets
    with ``finetune``.
    ``plot`` names a PNG of the curves (accuracy vs sparsity, one line per layer).
    """

    max_accuracy_drop: float = 0.005
    sparsities: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99)
    val_fraction: float = 0.2
    layers: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    block: tuple[int, int] = (1, 1)
    finetune: FineTune | None = field(default_factory=FineTune)
    regularizer: L1 | GroupLasso | None = None
    plot: str | None = None
    method = "sensitivity"

    def __post_init__(self) -> None:
        _num("max_accuracy_drop", self.max_accuracy_drop, 0.0, 1.0)
        if isinstance(self.sparsities, (str, float, int)) or not self.sparsities:
            raise CompressConfigError(f"sparsities must be a non-empty list, got "
                                      f"{self.sparsities!r}")
        for s in self.sparsities:
            _num("each swept sparsity", s, 0.0, 1.0, hi_open=True)
        swept = tuple(sorted({float(s) for s in self.sparsities}))
        object.__setattr__(self, "sparsities", swept)
        _num("val_fraction", self.val_fraction, 0.0, 0.9, lo_open=True)
        if self.plot is not None and (not isinstance(self.plot, str) or not self.plot):
            raise CompressConfigError(f"plot must be a file path, got {self.plot!r}")
        _common(self)

    def params(self) -> dict:
        return {"max_accuracy_drop": self.max_accuracy_drop, "sparsities": list(self.sparsities),
                "val_fraction": self.val_fraction, "plot": self.plot}


def _common(cfg) -> None:
    object.__setattr__(cfg, "layers", _names("layers", cfg.layers))
    object.__setattr__(cfg, "exclude", _names("exclude", cfg.exclude))
    b = tuple(cfg.block)
    if len(b) != 2:
        raise CompressConfigError(f"block must be (rows, cols), got {cfg.block!r}")
    for v in b:
        _int("block size", v, 1)
    object.__setattr__(cfg, "block", b)
    if cfg.finetune is not None and not isinstance(cfg.finetune, FineTune):
        raise CompressConfigError(f"finetune must be FineTune(...) or None, got {cfg.finetune!r}")
    if cfg.regularizer is not None and not isinstance(cfg.regularizer, (L1, GroupLasso)):
        raise CompressConfigError(f"regularizer must be L1(...), GroupLasso(...) or None, "
                                  f"got {cfg.regularizer!r}")
    if cfg.regularizer is not None and (cfg.finetune is None or cfg.finetune.epochs == 0):
        raise CompressConfigError("a regularizer needs fine-tuning (finetune.epochs >= 1)")


KINDS = {"conv": "Conv2d", "fc": "Linear"}  # --share-bits kinds → torch module types
SHARE_INITS = ("linear", "kmeans++", "density")


@dataclass(frozen=True)
class KMeansShareConfig:
    """Share each layer's weights among ``2**bits`` values (one codebook per group).

    Parameters
    ----------
    bits : dict[str, int]
        Bits per layer, by module name (``"fc1"``) or kind (``"conv"``, ``"fc"``); a name wins
        over its kind. Layers matching neither keep their weights.
    init : str
        Centroid initialisation: ``linear`` (Deep Compression), ``kmeans++`` or ``density``.
    group_size : int
        Output channels per codebook; 0 = one codebook per tensor.
    unique : bool
        A group with at most ``2**bits`` distinct values keeps them exactly.
    epochs, lr : int, float
        Centroid fine-tuning: every weight of a cluster gets the cluster's summed gradient, so
        assignments stay fixed and shared values stay shared; exact zeros stay zero.
    fp16 : bool
        Round the shared values to float16 after fine-tuning (the accuracy is measured
        after), so a layer decoded at load stores 2 bytes a codebook entry; False keeps
        float32.
    """

    bits: dict = field(default_factory=lambda: {"conv": 8, "fc": 5})
    init: str = "linear"
    group_size: int = 0
    unique: bool = True
    epochs: int = 2
    lr: float = 1e-4
    batch_size: int = 64
    seed: int = 0
    fp16: bool = True
    method = "kmeans_share"

    def __post_init__(self) -> None:
        if not isinstance(self.bits, dict) or not self.bits:
            raise CompressConfigError(f"bits must map layer names or kinds to bits, "
                                      f"got {self.bits!r}")
        for k, b in self.bits.items():
            _names("bits", (k,))
            if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 8:
                raise CompressConfigError(f"bits of {k!r} must be an integer in 1..8, got {b!r}")
        if self.init not in SHARE_INITS:
            raise CompressConfigError(f"init must be one of {', '.join(SHARE_INITS)}, "
                                      f"got {self.init!r}")
        _int("group_size", self.group_size, 0)
        _int("epochs", self.epochs, 0)
        _num("lr", self.lr, 0.0, 1.0, lo_open=True)
        _int("batch_size", self.batch_size, 1)
        _int("seed", self.seed, 0)
        if not isinstance(self.fp16, bool):
            raise CompressConfigError(f"fp16 must be true or false, got {self.fp16!r}")

    def __hash__(self) -> int:
        return hash((tuple(sorted(self.bits.items())), self.init, self.group_size, self.unique,
                     self.epochs, self.lr, self.batch_size, self.seed, self.fp16))

    def bits_for(self, name: str, module) -> int | None:
        """Bits of layer ``name`` (a torch module): by name, else by kind, else None."""
        if name in self.bits:
            return self.bits[name]
        for kind, type_name in KINDS.items():
            if kind in self.bits and type(module).__name__ == type_name:
                return self.bits[kind]
        return None

    def params(self) -> dict:
        return {"bits": dict(self.bits), "init": self.init, "group_size": self.group_size,
                "unique": self.unique, "epochs": self.epochs, "lr": self.lr,
                "batch_size": self.batch_size, "seed": self.seed, "fp16": self.fp16}


@dataclass(frozen=True)
class LowRankConfig:
    """Factorize Conv2d/Linear layers by truncated SVD (:mod:`tvmcomp.model.lowrank`), then
    fine-tune the whole model. The ranks come from exactly one of:

    ``ranks``
        ``{layer: rank}``, as given (each in 1 .. min(out, in·kh·kw) − 1).
    ``energy``
        In (0, 1]: for each layer of ``layers`` (default: every Conv2d/Linear), the smallest
        rank whose singular values keep that fraction of ``Σσ²``; a layer whose rank would
        not save parameters stays whole.
    ``max_accuracy_drop``
        A fraction (0.003 = 0.3 points): AIMET-style greedy selection. Each layer alone is
        factorized at each candidate rank that saves parameters and its accuracy measured on
        a held-out ``val_fraction`` of the training data; then the rank step that costs the
        least accuracy per MAC saved is taken, again and again, while the model with every
        step taken stays within the budget (each step checked on the held-out data).

    ``plot`` names a PNG of held-out accuracy against rank for each layer tried.
    """

    ranks: dict = field(default_factory=dict)
    energy: float | None = None
    max_accuracy_drop: float | None = None
    layers: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    val_fraction: float = 0.2
    finetune: FineTune | None = field(default_factory=lambda: FineTune(
        epochs=DEFAULT_LOWRANK_EPOCHS, lr=DEFAULT_LOWRANK_LR))
    plot: str | None = None
    method = "lowrank"

    def __post_init__(self) -> None:
        chosen = [k for k, v in (("ranks", self.ranks or None), ("energy", self.energy),
                                 ("max_accuracy_drop", self.max_accuracy_drop))
                  if v is not None]
        if len(chosen) != 1:
            raise CompressConfigError("low-rank needs exactly one of ranks, energy or "
                                      f"max_accuracy_drop, got {chosen or 'none'}")
        if not isinstance(self.ranks, dict):
            raise CompressConfigError(f"ranks must map layer names to ranks, got {self.ranks!r}")
        for name, r in self.ranks.items():
            _names("ranks", (name,))
            _int(f"rank of {name}", r, 1)
        if self.ranks and (self.layers or self.exclude):
            raise CompressConfigError("ranks names its layers; drop layers / exclude")
        if self.energy is not None:
            _num("energy", self.energy, 0.0, 1.0, lo_open=True)
        if self.max_accuracy_drop is not None:
            _num("max_accuracy_drop", self.max_accuracy_drop, 0.0, 1.0, lo_open=True)
        _num("val_fraction", self.val_fraction, 0.0, 0.9, lo_open=True)
        if self.plot is not None and (not isinstance(self.plot, str) or not self.plot):
            raise CompressConfigError(f"plot must be a file path, got {self.plot!r}")
        object.__setattr__(self, "layers", _names("layers", self.layers))
        object.__setattr__(self, "exclude", _names("exclude", self.exclude))
        if self.finetune is not None and not isinstance(self.finetune, FineTune):
            raise CompressConfigError(f"finetune must be FineTune(...) or None, "
                                      f"got {self.finetune!r}")

    def __hash__(self) -> int:
        return hash((tuple(sorted(self.ranks.items())), self.energy, self.max_accuracy_drop,
                     self.layers, self.exclude, self.val_fraction, self.finetune, self.plot))

    def params(self) -> dict:
        return {"ranks": dict(self.ranks), "energy": self.energy,
                "max_accuracy_drop": self.max_accuracy_drop, "layers": list(self.layers),
                "exclude": list(self.exclude), "val_fraction": self.val_fraction,
                "finetune": self.finetune.params() if self.finetune is not None else None,
                "plot": self.plot}


CONFIGS = {c.method: c for c in (MagnitudePruneConfig, SensitivityConfig, KMeansShareConfig,
                                 LowRankConfig)}
PruneConfig = MagnitudePruneConfig | SensitivityConfig | KMeansShareConfig | LowRankConfig


def to_dict(cfg: PruneConfig) -> dict:
    """The versioned JSON object of a compression config."""
    if isinstance(cfg, (KMeansShareConfig, LowRankConfig)):
        return {"format": CONFIG_FORMAT, "version": CONFIG_VERSION, "method": cfg.method,
                **cfg.params()}
    d = {"format": CONFIG_FORMAT, "version": CONFIG_VERSION, "method": cfg.method,
         **cfg.params(), "layers": list(cfg.layers), "exclude": list(cfg.exclude),
         "block": list(cfg.block),
         "finetune": cfg.finetune.params() if cfg.finetune is not None else None,
         "regularizer": ({"method": cfg.regularizer.method, **cfg.regularizer.params()}
                         if cfg.regularizer is not None else None)}
    return d


def to_json(cfg: PruneConfig) -> str:
    return json.dumps(to_dict(cfg), indent=2)


def from_dict(d: dict) -> PruneConfig:
    """Inverse of :func:`to_dict`; unknown keys are rejected with the list of valid ones."""
    if not isinstance(d, dict):
        raise CompressConfigError(f"compress config must be a JSON object, got {type(d).__name__}")
    if d.get("format") != CONFIG_FORMAT or d.get("version") != CONFIG_VERSION:
        raise CompressConfigError(f"not a {CONFIG_FORMAT} v{CONFIG_VERSION} config (format "
                                  f"{d.get('format')!r}, version {d.get('version')!r})")
    cls = CONFIGS.get(d.get("method"))
    if cls is None:
        raise CompressConfigError(f"method must be one of {', '.join(CONFIGS)}, "
                                  f"got {d.get('method')!r}")
    body = {k: v for k, v in d.items() if k not in ("format", "version", "method")}
    reject_unknown(body, {f.name for f in fields(cls)}, f"{cls.method} config",
                   CompressConfigError)
    if cls is KMeansShareConfig:
        return cls(**body)
    for key in ("layers", "exclude", "sparsities", "block"):
        if isinstance(body.get(key), list):
            body[key] = tuple(body[key])
    if isinstance(body.get("finetune"), dict):
        reject_unknown(body["finetune"], {f.name for f in fields(FineTune)}, "finetune",
                       CompressConfigError)
        body["finetune"] = FineTune(**body["finetune"])
    if isinstance(body.get("regularizer"), dict):
        r = dict(body["regularizer"])
        rcls = REGULARIZERS.get(r.pop("method", None))
        if rcls is None:
            raise CompressConfigError(f"regularizer method must be one of "
                                      f"{', '.join(REGULARIZERS)}, got {body['regularizer']!r}")
        reject_unknown(r, {f.name for f in fields(rcls)}, f"regularizer ({rcls.method})",
                       CompressConfigError)
        if isinstance(r.get("block"), list):
            r["block"] = tuple(r["block"])
        body["regularizer"] = rcls(**r)
    return cls(**body)


def from_json(text: str) -> PruneConfig:
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise CompressConfigError(f"compress config is not valid JSON: {e}") from None
    return from_dict(d)
