"""Artifact directory = ``model.so`` + ``manifest.json``, written atomically."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import ArtifactError

SCHEMA_VERSION = 1
LIBRARY = "model.so"
MANIFEST = "manifest.json"


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_artifact(out_dir: str | os.PathLike, export_library, manifest: dict,
                   check=None, extra_files: dict[str, bytes] | None = None) -> Path:
    """Write the artifact into a temp dir beside ``out_dir`` and rename it into place.

    ``export_library(path)`` writes the shared library; ``check(path)``, if given, may test it
    (raising to abort) and returns a dict merged into the manifest. The library's sha256 and
    size go into ``manifest["library"]``; ``extra_files`` (name → bytes) are written beside. An existing ``out_dir`` is replaced only once the new
    one is complete, so a failure never leaves a half-written artifact.
    """
    out = Path(out_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and not (out / MANIFEST).is_file():
        raise ArtifactError(f"{out} exists and is not a tvmcomp artifact; refusing to replace it")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        lib = tmp / LIBRARY
        export_library(str(lib))
        manifest = dict(manifest)
        manifest["library"] = {"file": LIBRARY, "sha256": sha256_file(lib),
                               "bytes": lib.stat().st_size}
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
        if check is not None:
            manifest.update(check(lib))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_manifest(art_dir: str | os.PathLike) -> dict:
    """Read and check ``manifest.json``; raises :class:`ArtifactError` with one clear line."""
    d = Path(art_dir)
    if not d.is_dir():
        raise ArtifactError(f"artifact directory not found: {d}")
    mpath = d / MANIFEST
    if not mpath.is_file():
        raise ArtifactError(f"{d}: no {MANIFEST}; not a tvmcomp artifact")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{mpath}: corrupt manifest ({e.__class__.__name__})") from None
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
        raise ArtifactError(
            f"{mpath}: unsupported manifest schema {manifest.get('schema_version')!r} "
            f"(this tvmcomp reads {SCHEMA_VERSION})" if isinstance(manifest, dict)
            else f"{mpath}: manifest is not a JSON object"
        )
    for key in ("library", "inputs", "outputs", "entry_points", "profile"):
        if key not in manifest:
            raise ArtifactError(f"{mpath}: manifest lacks {key!r}")
    return manifest


def check_library(art_dir: str | os.PathLike, manifest: dict) -> Path:
    """The library path, after checking it exists and matches the manifest's sha256."""
    lib = Path(art_dir) / manifest["library"]["file"]
    if not lib.is_file():
        raise ArtifactError(f"{Path(art_dir)}: {lib.name} is missing")
    digest = sha256_file(lib)
    if digest != manifest["library"]["sha256"]:
        raise ArtifactError(
            f"{lib}: sha256 {digest[:12]}… does not match the manifest "
            f"({manifest['library']['sha256'][:12]}…): the library was modified or replaced"
        )
    return lib
