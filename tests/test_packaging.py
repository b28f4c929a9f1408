"""What pyproject.toml promises about the environment holds for what it installs."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

PROJECT = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml")
                        .read_text())["project"]


def _deps() -> list[Requirement]:
    return [r for r in map(Requirement, PROJECT["dependencies"])
            if r.marker is None or r.marker.evaluate()]


def test_requires_python_is_what_every_dependency_needs():
    """The oldest Python our requires-python admits is one every installed dependency accepts
    (numpy and onnxruntime need 3.11; we once said 3.10)."""
    ours = SpecifierSet(PROJECT["requires-python"])
    oldest = next(f"3.{m}" for m in range(8, 20) if f"3.{m}" in ours)
    for req in _deps():
        needs = metadata.metadata(req.name).get("Requires-Python")
        assert needs is None or oldest in SpecifierSet(needs), (req.name, needs, oldest)


def test_extras_we_name_exist_and_are_installed():
    """Each extra we ask of a dependency (apache-tvm's popen-pool and rpc: psutil,
    cloudpickle, tornado) is one it declares, and what it brings is installed."""
    named = 0
    for req in _deps():
        for extra in req.extras:
            brought = [r for r in map(Requirement, metadata.requires(req.name) or [])
                       if r.marker is not None and r.marker.evaluate({"extra": extra})]
            assert brought, f"{req.name} has no extra {extra!r}"
            for r in brought:
                assert metadata.version(r.name), r.name
            named += 1
    assert named >= 2
