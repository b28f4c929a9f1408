"""Artifact directory = ``model.so`` + ``manifest.json``, written atomically."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ArtifactError

SCHEMA_VERSION = 1
LIBRARY = "model.so"
MANIFEST = "manifest.json"
OWNER = ".writer_pid"  # in a temp dir being written: the writing process


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """sha256 over what an artifact built here depends on besides its inputs: tvmcomp's
    source, the target profiles, the committed tuning records and TVM's version."""
    import tvm

    from .targets import TARGETS_DIR, TUNING_DIR

    h = hashlib.sha256(str(tvm.__version__).encode())
    package = Path(__file__).resolve().parent
    roots = ((package, "*.py"), (TARGETS_DIR, "*.toml"), (TUNING_DIR, "*"))
    for root, pattern in roots:
        for f in sorted(p for p in Path(root).rglob(pattern) if p.is_file()):
            h.update(f"{f.relative_to(root)}\0{sha256_file(f)}\0".encode())
    return h.hexdigest()


def write_artifact(out_dir: str | os.PathLike, export_library, manifest: dict,
                   check=None, extra_files: dict[str, bytes] | None = None) -> Path:
    """Write the artifact into a temp dir beside ``out_dir`` and rename it into place.

    ``export_library(path)`` writes the shared library; the library's sha256 and size go into
    ``manifest["library"]``; ``extra_files`` (name → bytes) are written beside.
    ``check(path, manifest)``, if given, may test the library against the typed manifest about
    to be written (raising to abort) and returns a dict merged into it. An existing
    ``out_dir`` is replaced only once the new one is complete, so a failure never leaves a
    half-written artifact.
    """
    out = Path(out_dir).resolve()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ArtifactError(f"cannot create {out.parent}: {e.strerror}") from None
    if out.exists() and not (out / MANIFEST).is_file():
        raise ArtifactError(f"{out} exists and is not a tvmcomp artifact; refusing to replace it")
    sweep_stale_temps(out)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as e:
        raise ArtifactError(f"cannot write into {out.parent}: {e.strerror}") from None
    (tmp / OWNER).write_text(str(os.getpid()))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700: an artifact is a build output
    try:
        lib = tmp / LIBRARY
        export_library(str(lib))
        manifest = dict(manifest)
        manifest["library"] = {"file": LIBRARY, "sha256": sha256_file(lib),
                               "bytes": lib.stat().st_size}
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
        if check is not None:
            manifest.update(check(lib, Manifest.parse(manifest, tmp / MANIFEST)))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
        (tmp / OWNER).unlink()
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except OSError as e:  # a full or read-only filesystem: nothing half-written is left
        shutil.rmtree(tmp, ignore_errors=True)
        raise ArtifactError(f"cannot write the artifact {out}: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


@dataclass(frozen=True)
class FileRef:
    """A file an artifact was made from (its source model, a checkpoint), recorded by name,
    sha256 and a path relative to the artifact, never by a host path: an artifact moves to
    other machines."""

    file: str
    sha256: str
    relpath: str  # from the artifact directory

    @classmethod
    def of(cls, path: str | os.PathLike, art_dir: str | os.PathLike,
           sha256: str | None = None) -> FileRef:
        """``path`` as seen from ``art_dir`` (``sha256``: its hash, if already known)."""
        path = Path(path).resolve()
        return cls(path.name, sha256 or sha256_file(path),
                   os.path.relpath(path, Path(art_dir).resolve()))

    @classmethod
    def parse(cls, d) -> FileRef | None:
        if not isinstance(d, dict) or not all(isinstance(d.get(k), str)
                                              for k in ("file", "sha256", "relpath")):
            return None
        return cls(d["file"], d["sha256"], d["relpath"])

    def to_dict(self) -> dict:
        return {"file": self.file, "sha256": self.sha256, "relpath": self.relpath}

    def places(self, art_dir: str | os.PathLike, *dirs) -> list[Path]:
        """Where it is looked for: at ``relpath``, beside the artifact, in it, in ``dirs``."""
        art = Path(art_dir)
        return [art / self.relpath, art.parent / self.file, art / self.file,
                *(Path(d) / self.file for d in dirs)]

    def locate(self, art_dir: str | os.PathLike, *dirs) -> Path | None:
        """The first of :meth:`places` holding a file with this sha256, else None."""
        for p in self.places(art_dir, *dirs):
            if p.is_file() and sha256_file(p) == self.sha256:
                return p
        return None


@dataclass(frozen=True)
class TensorSpec:
    """An input or output: name, shape (``"N"`` for the batch dimension) and dtype."""

    name: str
    shape: tuple
    dtype: str


@dataclass(frozen=True)
class Manifest:
    """``manifest.json``, typed: what the runtime, ``eval``, ``bench`` and RPC read.

    ``build`` writes the document; :func:`read_manifest` checks every field these readers use
    and builds this. ``data`` keeps the whole document (tuning, plan, verification, ...);
    ``manifest["key"]`` reads it too.
    """

    path: Path
    data: dict
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    entry_points: dict[int, str]   # batch -> VM function
    profile: dict
    library_file: str
    library_sha256: str
    precision: str                 # "fp32" | "int8"
    source_model: FileRef | None   # the float ONNX model it was built from
    checkpoint: FileRef | None     # the PyTorch checkpoint named in the ONNX metadata
    reference_model: str | None    # int8: the QDQ ONNX reference beside model.so
    threads: int | None            # runtime.threads: TVM's CPU thread pool size
    on_load: str | None = None     # runtime.on_load: VM function called once after loading

    @property
    def batches(self) -> list[int]:
        return sorted(self.entry_points)

    @property
    def art_dir(self) -> Path:
        return self.path.parent

    def __getitem__(self, key: str):
        return self.data[key]

    def get(self, key: str, default=None):
        return self.data.get(key, default)

    @classmethod
    def parse(cls, data, path: Path) -> Manifest:
        """Check ``data`` (a parsed manifest.json); any problem is one :class:`ArtifactError`."""
        def bad(what: str):
            return ArtifactError(f"{path}: {what}")

        if not isinstance(data, dict):
            raise bad("manifest is not a JSON object")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise bad(f"unsupported manifest schema {data.get('schema_version')!r} "
                      f"(this tvmcomp reads {SCHEMA_VERSION})")
        for key in ("library", "inputs", "outputs", "entry_points", "profile"):
            if key not in data:
                raise bad(f"manifest lacks {key!r}")
        lib = data["library"]
        if not (isinstance(lib, dict) and isinstance(lib.get("file"), str)
                and isinstance(lib.get("sha256"), str) and len(lib["sha256"]) == 64):
            raise bad("manifest 'library' needs a file name and a sha256")
        if "/" in lib["file"] or lib["file"] in ("", ".", ".."):
            raise bad(f"manifest library file {lib['file']!r} is not a file name")
        try:
            entries = {int(b): str(n) for b, n in data["entry_points"].items()}
        except (AttributeError, TypeError, ValueError):
            raise bad("manifest 'entry_points' must map batch sizes to names") from None
        if not entries or any(b < 1 for b in entries):
            raise bad("manifest 'entry_points' must name at least one batch size >= 1")
        if not isinstance(data["profile"], dict) or not isinstance(data["profile"].get("name"),
                                                                       str):
            raise bad("manifest 'profile' must be a profile object with a name")
        model = data.get("model") if isinstance(data.get("model"), dict) else {}
        precision = data.get("precision", "fp32")
        if precision not in ("fp32", "int8"):
            raise bad(f"manifest precision {precision!r} is not fp32 or int8")
        rt = data.get("runtime") if isinstance(data.get("runtime"), dict) else {}
        threads = rt.get("threads")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                    or threads < 1):
            raise bad(f"manifest runtime.threads must be an integer >= 1, got {threads!r}")
        on_load = rt.get("on_load")
        if on_load is not None and (not isinstance(on_load, str) or not on_load):
            raise bad(f"manifest runtime.on_load must be a function name or null, got "
                      f"{on_load!r}")
        return cls(path, data, _specs(data["inputs"], "inputs", bad),
                   _specs(data["outputs"], "outputs", bad), entries, data["profile"],
                   lib["file"], lib["sha256"], precision, FileRef.parse(model.get("source")),
                   FileRef.parse(model.get("checkpoint")), data.get("reference_model"),
                   threads, on_load)


def _specs(items, key: str, bad) -> tuple[TensorSpec, ...]:
    if not isinstance(items, list) or not items:
        raise bad(f"manifest {key!r} must be a non-empty list")
    out = []
    for t in items:
        shape = t.get("shape") if isinstance(t, dict) else None
        if not (isinstance(shape, list) and shape and all(
                isinstance(d, int) and d >= 0 for d in shape[1:])
                and isinstance(t.get("name"), str) and isinstance(t.get("dtype"), str)):
            raise bad(f"manifest {key!r} entry {t!r} needs a name, a shape and a dtype")
        out.append(TensorSpec(t["name"], tuple(shape), t["dtype"]))
    return tuple(out)


def sweep_stale_temps(out: Path) -> list[Path]:
    """Remove temp dirs beside ``out`` left by writers that died (SIGKILL, power loss).

    Each temp dir names its writer's PID; one whose process is gone is removed, one of a live
    writer (a concurrent build) or of unknown origin is left alone.
    """
    removed = []
    for d in out.parent.glob(f".{out.name}.*"):
        try:
            pid = int((d / OWNER).read_text())
        except (OSError, ValueError):
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
        except PermissionError:
            pass  # alive, another user's
    return removed


def read_manifest(art_dir: str | os.PathLike) -> Manifest:
    """Read and check ``manifest.json``; raises :class:`ArtifactError` with one clear line."""
    d = Path(art_dir)
    if not d.is_dir():
        raise ArtifactError(f"artifact directory not found: {d}")
    mpath = d / MANIFEST
    if not mpath.is_file():
        raise ArtifactError(f"{d}: no {MANIFEST}; not a tvmcomp artifact")
    try:
        data = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{mpath}: corrupt manifest ({e.__class__.__name__})") from None
    return Manifest.parse(data, mpath)


def check_library(art_dir: str | os.PathLike, manifest: Manifest) -> Path:
    """The library path, after checking it exists and matches the manifest's sha256."""
    lib = Path(art_dir) / manifest.library_file
    if not lib.is_file():
        raise ArtifactError(f"{Path(art_dir)}: {lib.name} is missing")
    digest = sha256_file(lib)
    if digest != manifest.library_sha256:
        raise ArtifactError(
            f"{lib}: sha256 {digest[:12]}… does not match the manifest "
            f"({manifest.library_sha256[:12]}…): the library was modified or replaced"
        )
    return lib
