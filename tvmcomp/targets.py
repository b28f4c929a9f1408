"""Target profiles: ``targets/<name>.toml`` → a frozen, validated :class:`Profile`."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from .errors import TvmcompError, reject_unknown

REPO_ROOT = Path(__file__).resolve().parents[1]
TARGETS_DIR = REPO_ROOT / "targets"
TUNING_DIR = REPO_ROOT / "tuning_logs"
FAMILIES = ("x86", "arm", "cuda")


@dataclass(frozen=True)
class Profile:
    """A compilation target: TVM target dict, family, cores and where its tuning logs live."""

    name: str
    description: str
    family: str
    target: dict
    cores: int
    host: dict | None = None
    cross_compiler: str | None = None
    requires_cpu_flags: tuple[str, ...] = ()
    source: str = ""
    tuning_db: str = field(default="")
    board: dict | None = None  # how the board is reached (tvmcomp.deploy.boards overrides)
    # profiles whose committed records may serve tasks this profile has no record for
    record_fallback: tuple[str, ...] = ()
    # how int8 conv2d/matmul accumulate (QuantizeInt8): "int32", or "float32" (exact, checked
    # per layer) where the CPU has no fast int8 dot product (x86 without VNNI)
    int8_accumulate: str = "int32"
    # > 0: a candidate for the host's default profile; the highest rank that runs here wins
    host_rank: int = 0

    def tvm_target(self):
        """The ``tvm.target.Target`` (with host, where the profile names one); a [target] or
        [host] TVM refuses is one :class:`TvmcompError` line naming the profile file."""
        import tvm

        try:
            if self.host is not None:
                return tvm.target.Target(self.target, host=self.host)
            return tvm.target.Target(self.target)
        except (ValueError, TypeError, RuntimeError) as e:
            why = str(e).strip().splitlines()[-1].split(". Target creation")[0]
            raise TvmcompError(f"{self.source or self.name}: TVM refuses the profile's "
                               f"target: {why}") from None

    @property
    def tuning_dir(self) -> Path:
        """The committed MetaSchedule database folder of this profile (read-only to builds)."""
        return Path(self.tuning_db) if self.tuning_db else TUNING_DIR / self.name

    def missing_cpu_flags(self) -> list[str]:
        """CPU flags this profile needs that the machine we run on lacks (empty = can run)."""
        if self.family == "cuda":
            return [] if _cuda_gpu_present() else ["gpu:cuda"]
        arch = platform.machine().lower()
        triple = str(self.target.get("mtriple", "x86_64"))
        if not triple.startswith(arch.replace("arm64", "aarch64")):
            return [f"arch:{triple.split('-')[0]}"]
        flags = cpu_flags()
        return [f for f in self.requires_cpu_flags if f not in flags]

    def device(self, session=None):
        """The device this profile's artifacts run on: here, or in ``session`` (TVM RPC)."""
        return device_for(self.target["kind"], session)

    def runs_here(self) -> bool:
        return not self.missing_cpu_flags()

    def to_dict(self) -> dict:
        return {
            "name": self.name, "description": self.description, "family": self.family,
            "target": self.target, "host": self.host, "cores": self.cores,
            "cross_compiler": self.cross_compiler,
            "requires_cpu_flags": list(self.requires_cpu_flags), "board": self.board,
            "record_fallback": list(self.record_fallback),
            "int8_accumulate": self.int8_accumulate, "host_rank": self.host_rank,
        }


def device_for(target_kind: str, session=None):
    """The device of a TVM target kind (``"cuda"``: GPU 0, else the CPU), here or in
    ``session`` (TVM RPC)."""
    if session is None:
        import tvm

        session = tvm
    return session.cuda(0) if target_kind == "cuda" else session.cpu(0)


_KEYS = {
    "description": str, "family": str, "target": dict, "cores": int, "host": dict,
    "cross_compiler": str, "requires_cpu_flags": list, "tuning_db": str, "board": dict,
    "record_fallback": list, "int8_accumulate": str, "host_rank": int,
}
INT8_ACCUMULATE = ("int32", "float32")
_REQUIRED = ("description", "family", "target", "cores")


def cpu_flags() -> set[str]:
    """This machine's CPU flags (x86 ``flags`` / aarch64 ``Features`` in /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):  # x86 / aarch64
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cuda_gpu_present() -> bool:
    import tvm

    return bool(tvm.cuda(0).exist)


def parse_profile(data: dict, name: str, source: str = "<dict>") -> Profile:
    """Validate a profile mapping; unknown keys and wrong types raise :class:`TvmcompError`."""
    reject_unknown(data, _KEYS, source=source)
    for key in _REQUIRED:
        if key not in data:
            raise TvmcompError(f"{source}: missing required key {key!r}")
    for key, value in data.items():
        if not isinstance(value, _KEYS[key]) or (key == "cores" and isinstance(value, bool)):
            raise TvmcompError(
                f"{source}: key {key!r} must be {_KEYS[key].__name__}, got {type(value).__name__}"
            )
    if data["family"] not in FAMILIES:
        raise TvmcompError(
            f"{source}: family {data['family']!r} is not one of {', '.join(FAMILIES)}"
        )
    if "kind" not in data["target"]:
        raise TvmcompError(f"{source}: [target] needs a 'kind' (e.g. \"llvm\" or \"cuda\")")
    if data["cores"] < 1:
        raise TvmcompError(f"{source}: cores must be >= 1")
    acc = data.get("int8_accumulate", INT8_ACCUMULATE[0])
    if acc not in INT8_ACCUMULATE:
        raise TvmcompError(f"{source}: int8_accumulate must be one of "
                           f"{', '.join(INT8_ACCUMULATE)}, got {acc!r}")
    for key in ("requires_cpu_flags", "record_fallback"):
        if not all(isinstance(v, str) for v in data.get(key, ())):
            raise TvmcompError(f"{source}: {key} must be a list of strings")
    tdb = data.get("tuning_db", "")
    if tdb and not os.path.isabs(tdb):
        tdb = str(REPO_ROOT / tdb)
    return Profile(
        name=name, description=data["description"], family=data["family"],
        target=dict(data["target"]), cores=data["cores"], host=data.get("host"),
        cross_compiler=data.get("cross_compiler"),
        requires_cpu_flags=tuple(data.get("requires_cpu_flags", ())), source=source,
        tuning_db=tdb, board=data.get("board"),
        record_fallback=tuple(data.get("record_fallback", ())),
        int8_accumulate=acc, host_rank=data.get("host_rank", 0),
    )


def profile_from_dict(d: dict, source: str = "<manifest>") -> Profile:
    """Inverse of :meth:`Profile.to_dict` (as stored in artifact manifests)."""
    body = {k: v for k, v in d.items() if k != "name" and v is not None}
    return parse_profile(body, d.get("name", "?"), source)


def available_profiles() -> list[str]:
    return sorted(p.stem for p in TARGETS_DIR.glob("*.toml"))


def load_profile(name_or_path: str) -> Profile:
    """Load ``targets/<name>.toml`` or a path to a ``.toml`` file."""
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.is_file():
        name = path.stem
    else:
        path = TARGETS_DIR / f"{name_or_path}.toml"
        name = name_or_path
        if not path.is_file():
            raise TvmcompError(
                f"unknown profile {name_or_path!r}; available: {', '.join(available_profiles())}"
            )
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise TvmcompError(f"{path}: invalid TOML: {e}") from None
    return parse_profile(data, name, str(path))


def host_profile() -> Profile:
    """The default profile of this machine: of the shipped profiles with a ``host_rank``,
    the highest-ranked one that runs here (``x86_avx512`` where AVX-512 VNNI is present,
    else ``x86_avx2``)."""
    ranked = sorted((p for p in map(load_profile, available_profiles()) if p.host_rank > 0),
                    key=lambda p: -p.host_rank)
    for prof in ranked:
        if prof.runs_here():
            return prof
    raise TvmcompError(
        f"no shipped profile runs on this {platform.machine()} machine by default (candidates: "
        f"{', '.join(p.name for p in ranked)}; x86 needs at least AVX2 + FMA); name one with "
        "--profile"
    )
