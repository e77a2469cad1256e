"""``--mesh``, ``--axis_mapping`` and the configs in ``configs/``: parsing, errors, overrides."""

from __future__ import annotations

import os

import pytest
from absl import flags
from hypothesis import given
from hypothesis import strategies as st

from distmap._src import flags as dflags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")


def _parse(*args, distributed=False):
    fv = flags.FlagValues()
    dflags.define_mesh_flags(fv)
    if distributed:
        dflags.define_distributed_flags(fv)
    fv(["prog", *args])
    return fv


def test_mesh_and_mapping_parse_in_order():
    fv = _parse("--mesh=replica=2,data=-1,model=2", "--axis_mapping=batch=replica+data,ensemble=model")
    assert list(dflags.mesh_shape_from_flags(fv).items()) == [("replica", 2), ("data", -1), ("model", 2)]
    assert dflags.axis_mapping_from_flags(fv) == {"batch": ("replica", "data"), "ensemble": "model"}


def test_repeated_name_makes_an_ordered_rule_list():
    fv = _parse("--axis_mapping=batch=data,batch=replica,hidden=model")
    assert dflags.axis_mapping_from_flags(fv) == [("batch", "data"), ("batch", "replica"), ("hidden", "model")]


def test_unset_flags_give_defaults():
    fv = _parse()
    assert dflags.mesh_shape_from_flags(fv) == {"data": -1}
    assert dflags.axis_mapping_from_flags(fv) == {}
    assert dflags.cpu_devices_from_flags(fv) is None
    assert dflags.mesh_shape_from_flags(flags.FlagValues(), default={"x": 2}) == {"x": 2}


@pytest.mark.parametrize(
    "arg, words",
    [
        ("--mesh=data=4,model=x", ["--mesh", "'model=x'", "not an integer"]),
        ("--mesh=data=4,model", ["'model'", "NAME=VALUE"]),
        ("--mesh=data=0", ["'data=0'", "positive"]),
        ("--mesh=data=-2", ["'data=-2'", "positive"]),
        ("--mesh=data=-1,model=-1", ["at most one", "-1"]),
        ("--mesh=data=2,data=2", ["'data'", "twice"]),
        ("--mesh=da-ta=2", ["'da-ta'", "not a valid axis name"]),
        ("--mesh=", ["empty"]),
        ("--axis_mapping=batch", ["'batch'", "NAME=VALUE"]),
        ("--axis_mapping=batch=data+", ["'batch=data+'", "not a valid mesh axis name"]),
        ("--axis_mapping=batch=data+data", ["'batch=data+data'", "repeats"]),
        ("--axis_mapping=batch=data,batch=data", ["repeats a rule"]),
    ],
)
def test_bad_values_fail_at_parse_time_naming_the_item(arg, words):
    with pytest.raises(flags.IllegalFlagValueError) as info:
        _parse(arg)
    for w in words:
        assert w in str(info.value)


def test_mapping_to_a_mesh_axis_the_mesh_lacks():
    with pytest.raises(flags.IllegalFlagValueError, match="sends 'batch' to mesh axis 'dta'.*--mesh=data=4,model=2"):
        _parse("--mesh=data=4,model=2", "--axis_mapping=batch=dta")
    _parse("--axis_mapping=batch=dta")  # without --mesh nothing to check against


def test_later_flags_override_earlier_ones_and_configs():
    cfg = os.path.join(CONFIGS, "cpu_8dev.flags")
    fv = _parse(f"--flagfile={cfg}", "--mesh=data=8", "--axis_mapping=batch=data")
    assert dflags.mesh_shape_from_flags(fv) == {"data": 8}
    assert dflags.cpu_devices_from_flags(fv) == 8  # kept from the config
    fv = _parse("--mesh=data=2", f"--flagfile={cfg}")  # the config comes later, so it wins
    assert dflags.mesh_shape_from_flags(fv) == {"data": 4, "model": 2}
    fv = _parse("--cpu_devices=2", "--cpu_devices=4")
    assert dflags.cpu_devices_from_flags(fv) == 4


@pytest.mark.parametrize("name", ["cpu_8dev.flags", "local_2proc.flags"])
def test_configs_parse_in_programs(name):
    fv = _parse(f"--flagfile={os.path.join(CONFIGS, name)}")
    shape = dflags.mesh_shape_from_flags(fv)
    assert dflags.mesh_size(shape, 8) == 8
    assert dflags.axis_mapping_from_flags(fv) == {"batch": "data", "ensemble": "model"}


def test_local_2proc_config_parses_for_a_program_that_defines_start_up_flags():
    fv = _parse(f"--flagfile={os.path.join(CONFIGS, 'local_2proc.flags')}", distributed=True)
    assert fv.num_processes == 2  # the same meaning as the launcher's flag


def test_distributed_flags():
    fv = _parse("--coordinator_address=127.0.0.1:1234", "--num_processes=2", "--process_id=1",
                "--local_device_ids=0,1", "--init_timeout=5", distributed=True)
    assert (fv.coordinator_address, fv.num_processes, fv.process_id, fv.local_device_ids, fv.init_timeout) == (
        "127.0.0.1:1234", 2, 1, ["0", "1"], 5.0)


def test_defining_twice_is_harmless():
    fv = flags.FlagValues()
    dflags.define_mesh_flags(fv)
    dflags.define_mesh_flags(fv)
    dflags.define_distributed_flags(fv)
    fv(["prog", "--mesh=data=2"])
    assert fv.mesh == {"data": 2}


def test_flagfile_round_trip():
    fv = _parse("--mesh=replica=2,data=4", "--axis_mapping=batch=replica+data,batch=data")
    text = fv.flags_into_string()
    assert "--mesh=replica=2,data=4" in text and "--axis_mapping=batch=replica+data,batch=data" in text


_names = st.from_regex(r"[a-z_][a-z0-9_]{0,6}", fullmatch=True)


@given(st.dictionaries(_names, st.integers(1, 64), min_size=1, max_size=5), st.data())
def test_mesh_text_round_trips(shape, data):
    if data.draw(st.booleans()):
        shape[data.draw(st.sampled_from(sorted(shape)))] = -1
    assert dflags.parse_mesh(dflags.format_mesh(shape)) == shape


@given(st.dictionaries(_names, st.lists(_names, min_size=1, max_size=3, unique=True), min_size=1, max_size=4))
def test_axis_mapping_text_round_trips(mapping):
    text = ",".join(f"{k}={'+'.join(v)}" for k, v in mapping.items())
    expected = {k: v[0] if len(v) == 1 else tuple(v) for k, v in mapping.items()}
    assert dflags.parse_axis_mapping(text) == expected
