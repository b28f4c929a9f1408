"""Int8 post-training quantization config: frozen dataclasses with a versioned JSON form."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields

from ..errors import reject_unknown
from .errors import QuantConfigError

CONFIG_FORMAT = "tvmcomp.quant"
CONFIG_VERSION = 1
ACTIVATION_MODES = ("symmetric", "asymmetric")


@dataclass(frozen=True)
class MinMax:
    """Range = the minimum and maximum seen over all calibration images."""

    method = "minmax"

    def params(self) -> dict:
        return {}


@dataclass(frozen=True)
class Percentile:
    """Range = the ``percentile`` of |x| (symmetric) or of both tails of x (asymmetric).

    Computed from a ``bins``-bin histogram, so the threshold is exact to one bin width.
    """

    percentile: float = 99.99
    bins: int = 2048
    method = "percentile"

    def __post_init__(self) -> None:
        p = self.percentile
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 50.0 < p <= 100.0:
            raise QuantConfigError(f"percentile must be in (50, 100], got {p!r}")
        _check_bins(self.bins, 16)

    def params(self) -> dict:
        return {"percentile": float(self.percentile), "bins": self.bins}


@dataclass(frozen=True)
class Entropy:
    """Range = the |x| threshold minimising KL(reference ‖ 128-level quantised) (TensorRT)."""

    bins: int = 2048
    method = "entropy"

    def __post_init__(self) -> None:
        _check_bins(self.bins, 256)

    def params(self) -> dict:
        return {"bins": self.bins}


@dataclass(frozen=True)
class PerTensor:
    """One scale for the whole weight tensor."""

    granularity = "per_tensor"

    def params(self) -> dict:
        return {}


@dataclass(frozen=True)
class PerChannel:
    """One scale per output channel: axis 0 of OIHW conv weights (Gemm/MatMul: output features).

    Only the output-channel axis can be folded into integer requantization, so ``axis`` must
    be 0; it is kept so that configs state the layout they assume.
    """

    axis: int = 0
    granularity = "per_channel"

    def __post_init__(self) -> None:
        if self.axis != 0 or isinstance(self.axis, bool):
            raise QuantConfigError(
                f"PerChannel axis must be 0 (the output channel of OIHW weights), got {self.axis!r}"
            )

    def params(self) -> dict:
        return {"axis": self.axis}


CALIBRATIONS = {c.method: c for c in (MinMax, Percentile, Entropy)}
GRANULARITIES = {g.granularity: g for g in (PerTensor, PerChannel)}


@dataclass(frozen=True)
class QuantConfig:
    """How to quantize a float model to int8.

    Parameters
    ----------
    calibration : MinMax | Percentile | Entropy
        How activation ranges are chosen from the calibration statistics.
    activations : str
        ``"symmetric"`` (zero point 0) or ``"asymmetric"`` (zero point from the range).
    weights : PerTensor | PerChannel
        Weight scale granularity; weights are always symmetric int8 in [-127, 127].
    num_calib : int
        Calibration images drawn (seeded) from the set given; at least 2.
    batch_size : int
        Images per ONNX Runtime call during calibration.
    skip : tuple[str, ...]
        ONNX node names (e.g. ``"/fc3/Gemm"``) kept in float.
    seed : int
        Seed of the calibration subset draw.
    """

    calibration: MinMax | Percentile | Entropy = field(default_factory=MinMax)
    activations: str = "symmetric"
    weights: PerTensor | PerChannel = field(default_factory=PerChannel)
    num_calib: int = 256
    batch_size: int = 64
    skip: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.calibration, tuple(CALIBRATIONS.values())):
            raise QuantConfigError(
                f"calibration must be MinMax(), Percentile(p) or Entropy(bins), "
                f"got {self.calibration!r}"
            )
        if self.activations not in ACTIVATION_MODES:
            raise QuantConfigError(
                f"activations must be one of {', '.join(ACTIVATION_MODES)}; "
                f"got {self.activations!r}"
            )
        if not isinstance(self.weights, tuple(GRANULARITIES.values())):
            raise QuantConfigError(
                f"weights must be PerTensor() or PerChannel(axis=0), got {self.weights!r}"
            )
        for name, low in (("num_calib", 2), ("batch_size", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise QuantConfigError(f"{name} must be an integer >= {low}, got {v!r}")
        if isinstance(self.skip, str):
            raise QuantConfigError(f"skip must be a list of node names, got the string "
                                   f"{self.skip!r}")
        skip = tuple(self.skip)
        if not all(isinstance(s, str) and s for s in skip):
            raise QuantConfigError(f"skip must hold non-empty node names, got {skip!r}")
        object.__setattr__(self, "skip", skip)

    @property
    def symmetric(self) -> bool:
        return self.activations == "symmetric"

    def to_dict(self) -> dict:
        return {
            "format": CONFIG_FORMAT,
            "version": CONFIG_VERSION,
            "calibration": {"method": self.calibration.method, **self.calibration.params()},
            "activations": self.activations,
            "weights": {"granularity": self.weights.granularity, **self.weights.params()},
            "num_calib": self.num_calib,
            "batch_size": self.batch_size,
            "skip": list(self.skip),
            "seed": self.seed,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict) -> QuantConfig:
        if not isinstance(d, dict):
            raise QuantConfigError(f"quant config must be a JSON object, got {type(d).__name__}")
        if d.get("format") != CONFIG_FORMAT or d.get("version") != CONFIG_VERSION:
            raise QuantConfigError(
                f"not a {CONFIG_FORMAT} v{CONFIG_VERSION} config (format {d.get('format')!r}, "
                f"version {d.get('version')!r})"
            )
        body = {k: v for k, v in d.items() if k not in ("format", "version")}
        reject_unknown(body, {f.name for f in fields(cls)}, "quant config", QuantConfigError)
        if "calibration" in body:
            body["calibration"] = _sub(body["calibration"], "method", CALIBRATIONS, "calibration")
        if "weights" in body:
            body["weights"] = _sub(body["weights"], "granularity", GRANULARITIES, "weights")
        if "skip" in body:
            if not isinstance(body["skip"], list):
                raise QuantConfigError(f"skip must be a list, got {body['skip']!r}")
            body["skip"] = tuple(body["skip"])
        return cls(**body)

    @classmethod
    def from_json(cls, text: str) -> QuantConfig:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise QuantConfigError(f"quant config is not valid JSON: {e}") from None
        return cls.from_dict(d)


def _check_bins(bins, low: int) -> None:
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < low:
        raise QuantConfigError(f"histogram bins must be an integer >= {low}, got {bins!r}")


def _sub(d, key: str, table: dict, what: str):
    if not isinstance(d, dict) or d.get(key) not in table:
        raise QuantConfigError(
            f"{what} must be an object with {key!r} one of {', '.join(table)}; got {d!r}"
        )
    cls = table[d[key]]
    body = {k: v for k, v in d.items() if k != key}
    reject_unknown(body, {f.name for f in fields(cls)}, f"{what} ({d[key]})", QuantConfigError)
    return cls(**body)



def calibration_from_str(text: str) -> MinMax | Percentile | Entropy:
    """``"minmax"``, ``"percentile"``, ``"percentile:99.9"``, ``"entropy"``, ``"entropy:4096"``
    (for a CLI ``type=``); raises :class:`QuantConfigError`."""
    method, _, arg = str(text).strip().lower().partition(":")
    try:
        if method == "minmax" and not arg:
            return MinMax()
        if method == "percentile":
            return Percentile(float(arg)) if arg else Percentile()
        if method == "entropy":
            return Entropy(int(arg)) if arg else Entropy()
    except ValueError as e:
        if isinstance(e, QuantConfigError):
            raise
    raise QuantConfigError(f"calibration must be minmax, percentile[:P] or entropy[:BINS]; "
                           f"got {text!r}")


def weights_from_str(text: str) -> PerTensor | PerChannel:
    """``"per-tensor"`` or ``"per-channel"`` (underscores accepted)."""
    key = str(text).strip().lower().replace("-", "_")
    if key not in GRANULARITIES:
        raise QuantConfigError(f"weights must be per-tensor or per-channel; got {text!r}")
    return GRANULARITIES[key]()
