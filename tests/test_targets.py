"""Target profiles: shipped TOML files, validation and error messages."""

import re

import pytest

from tvmcomp.errors import TvmcompError
from tvmcomp.targets import (
    profile_from_dict,
    TUNING_DIR,
    available_profiles,
    host_profile,
    load_profile,
    parse_profile,
)

VALID_KEYS = ["cores", "cross_compiler", "description", "family", "host",
              "requires_cpu_flags", "target", "tuning_db"]

BASE = {"description": "test", "family": "x86", "cores": 2,
        "target": {"kind": "llvm", "mtriple": "x86_64-linux-gnu"}}


def test_shipped_profiles():
    assert {"x86_avx2", "x86_avx512"} <= set(available_profiles())


@pytest.mark.parametrize("name", available_profiles())
def test_profile_round_trip(name):
    prof = load_profile(name)
    assert prof.name == name and prof.source.endswith(f"{name}.toml")
    d = prof.to_dict()
    assert d["name"] == name
    again = profile_from_dict(d)  # what artifact manifests store
    assert again.to_dict() == d and again.name == name
    assert again.tvm_target().kind.name == prof.target["kind"]
    assert prof.tuning_dir == TUNING_DIR / name


def test_shipped_x86_profiles_content():
    avx2, avx512 = load_profile("x86_avx2"), load_profile("x86_avx512")
    assert avx2.family == avx512.family == "x86"
    assert {"avx2", "fma"} <= set(avx2.requires_cpu_flags)
    assert "avx512f" in avx512.requires_cpu_flags
    assert avx2.target["mcpu"] == "core-avx2"
    t = avx2.tvm_target()
    assert t.kind.name == "llvm" and str(t.attrs["mcpu"]) == "core-avx2"


def test_unknown_key_rejected():
    with pytest.raises(TvmcompError) as e:
        parse_profile({**BASE, "coers": 4}, "p", source="p.toml")
    msg = str(e.value)
    assert "p.toml" in msg and "'coers'" in msg
    for key in VALID_KEYS:
        assert key in msg
    assert "\n" not in msg


def test_unknown_key_in_toml_file_rejected(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('description = "d"\nfamily = "x86"\ncores = 2\nmcpu = "znver3"\n'
                    '[target]\nkind = "llvm"\n')
    with pytest.raises(TvmcompError, match=r"unknown key 'mcpu'; valid keys: board, cores, "):
        load_profile(str(path))


@pytest.mark.parametrize("key, value, expect", [
    ("cores", "2", "'cores' must be int, got str"),
    ("cores", True, "'cores' must be int, got bool"),
    ("target", "llvm", "'target' must be dict, got str"),
    ("requires_cpu_flags", "avx2", "'requires_cpu_flags' must be list, got str"),
    ("description", 3, "'description' must be str, got int"),
])
def test_wrong_type_rejected(key, value, expect):
    with pytest.raises(TvmcompError, match=re.escape(expect)):
        parse_profile({**BASE, key: value}, "p")


@pytest.mark.parametrize("change, expect", [
    ({"family": "mips"}, "family 'mips' is not one of x86, arm, cuda"),
    ({"cores": 0}, "cores must be >= 1"),
    ({"target": {"mcpu": "core-avx2"}}, "needs a 'kind'"),
])
def test_invalid_values_rejected(change, expect):
    with pytest.raises(TvmcompError, match=re.escape(expect)):
        parse_profile({**BASE, **change}, "p")


def test_missing_required_key():
    data = dict(BASE)
    del data["family"]
    with pytest.raises(TvmcompError, match="missing required key 'family'"):
        parse_profile(data, "p")


def test_unknown_profile_lists_available():
    with pytest.raises(TvmcompError) as e:
        load_profile("x86_avx3")
    msg = str(e.value)
    assert "unknown profile 'x86_avx3'" in msg
    for name in available_profiles():
        assert name in msg


def test_invalid_toml(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("description = \n")
    with pytest.raises(TvmcompError, match="invalid TOML"):
        load_profile(str(path))


def test_relative_tuning_db_is_repo_relative(tmp_path):
    prof = parse_profile({**BASE, "tuning_db": "some/where"}, "p")
    assert prof.tuning_dir == TUNING_DIR.parent / "some" / "where"
    prof = parse_profile({**BASE, "tuning_db": str(tmp_path)}, "p")
    assert prof.tuning_dir == tmp_path


def test_missing_cpu_flags(x86_host):
    ok = parse_profile({**BASE, "requires_cpu_flags": []}, "p")
    assert ok.missing_cpu_flags() == [] and ok.runs_here()
    fake = parse_profile({**BASE, "requires_cpu_flags": ["no_such_flag_xyz"]}, "p")
    assert fake.missing_cpu_flags() == ["no_such_flag_xyz"] and not fake.runs_here()
    arm = parse_profile({**BASE, "family": "arm",
                         "target": {"kind": "llvm", "mtriple": "aarch64-linux-gnu"}}, "p")
    import platform

    if platform.machine() == "x86_64":
        assert arm.missing_cpu_flags() == ["arch:aarch64"]


def test_host_profile_runs_here(x86_host):
    prof = host_profile()
    assert prof.runs_here()
    assert prof.name in ("x86_avx2", "x86_avx512")
    # the highest host_rank that runs here: AVX-512 VNNI machines get x86_avx512
    assert prof.name == ("x86_avx512" if load_profile("x86_avx512").runs_here() else "x86_avx2")


def test_per_target_choices_are_profile_data():
    """int8 accumulation and the host default come from the TOML files, not Python lists."""
    assert load_profile("x86_avx2").int8_accumulate == "float32"  # no VNNI
    assert load_profile("x86_avx512").int8_accumulate == "int32"
    assert load_profile("arm_cortex_a72").int8_accumulate == "int32"  # the default
    assert load_profile("x86_avx512").host_rank > load_profile("x86_avx2").host_rank > 0
    assert load_profile("arm_cortex_a72").host_rank == 0
    with pytest.raises(TvmcompError, match="int8_accumulate must be one of int32, float32"):
        parse_profile({**BASE, "int8_accumulate": "int16"}, "p")


def test_target_tvm_refuses_is_one_line(tmp_path):
    """A [target] value of the wrong type (mcpu = 5) is one line naming the file, not a TVM
    traceback."""
    src = (TUNING_DIR.parent / "targets" / "x86_avx2.toml").read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(src.replace('mcpu = "core-avx2"', "mcpu = 5"))
    prof = load_profile(str(bad))
    with pytest.raises(TvmcompError) as e:
        prof.tvm_target()
    msg = str(e.value)
    assert msg.startswith(f"{bad}: TVM refuses the profile's target:") and "mcpu" in msg
    assert "\n" not in msg
