"""Axis: validation, hashing, immutability; selections and their parsing."""

import copy
import pickle

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import distmap
from distmap import Axis, errors
from distmap._src.axis import axis_name, is_single_selector, parse_selection, selection_names, to_axes

names = st.text(alphabet="abcdefghij_", min_size=1, max_size=6)


class TestAxis:
    def test_fields_and_unpacking(self):
        a = Axis("batch", 4)
        assert a.name == "batch" and a.size == 4
        name, size = a
        assert (name, size) == ("batch", 4)
        assert repr(a) == "Axis(name='batch', size=4)"

    def test_numpy_int_size_becomes_int(self):
        a = Axis("batch", np.int64(3))
        assert a.size == 3 and type(a.size) is int

    def test_zero_size_allowed(self):
        assert Axis("empty", 0).size == 0

    @pytest.mark.parametrize("bad", ["", 3, None, b"batch"])
    def test_bad_name(self, bad):
        with pytest.raises(errors.AxisSelectorError, match="non-empty str"):
            Axis(bad, 2)

    @pytest.mark.parametrize("bad", [2.0, "2", None, True])
    def test_bad_size_type(self, bad):
        with pytest.raises(errors.AxisSelectorError, match="size must be an int"):
            Axis("batch", bad)

    def test_negative_size(self):
        with pytest.raises(errors.AxisSizeError, match="-1"):
            Axis("batch", -1)

    def test_errors_subclass_builtins(self):
        assert issubclass(errors.AxisSelectorError, TypeError)
        assert issubclass(errors.AxisSizeError, ValueError)
        assert issubclass(errors.AxisSizeError, errors.DistmapError)

    def test_frozen(self):
        a = Axis("batch", 4)
        with pytest.raises(AttributeError):
            a.size = 5  # type: ignore[misc]
        with pytest.raises(AttributeError):
            a.extra = 1  # type: ignore[attr-defined]

    def test_hash_and_equality(self):
        assert Axis("a", 2) == Axis("a", 2)
        assert Axis("a", 2) != Axis("a", 3)
        assert Axis("a", 2) != Axis("b", 2)
        assert len({Axis("a", 2), Axis("a", 2), Axis("a", 3)}) == 2
        assert {Axis("a", 2): 1}[Axis("a", 2)] == 1

    @given(names, st.integers(0, 1000))
    def test_hash_consistent_with_eq(self, name, size):
        a, b = Axis(name, size), Axis(name, size)
        assert a == b and hash(a) == hash(b)

    def test_resize_and_alias(self):
        a = Axis("batch", 4)
        assert a.resize(8) == Axis("batch", 8)
        assert a.alias("b") == Axis("b", 4)
        with pytest.raises(errors.AxisSizeError):
            a.resize(-2)

    def test_replace_is_validated(self):
        with pytest.raises(errors.AxisSizeError):
            Axis("batch", 4)._replace(size=-1)
        assert Axis("batch", 4)._replace(size=2) == Axis("batch", 2)
        assert isinstance(Axis("batch", 4)._replace(size=2), Axis)

    def test_copy_and_pickle(self):
        a = Axis("batch", 4)
        assert copy.copy(a) == a and copy.deepcopy(a) == a
        b = pickle.loads(pickle.dumps(a))
        assert b == a and isinstance(b, Axis)

    def test_exported(self):
        assert distmap.Axis is Axis


class TestSelectors:
    def test_axis_name(self):
        assert axis_name("batch") == "batch"
        assert axis_name(Axis("batch", 2)) == "batch"

    @pytest.mark.parametrize("bad", [3, None, ("a",), ""])
    def test_axis_name_bad(self, bad):
        with pytest.raises(errors.AxisSelectorError):
            axis_name(bad)

    def test_is_single_selector(self):
        assert is_single_selector("a") and is_single_selector(Axis("a", 1))
        assert not is_single_selector(("a",)) and not is_single_selector({"a": 1})


class TestParseSelection:
    def test_forms(self):
        assert parse_selection("a") == (("a", None),)
        assert parse_selection(Axis("a", 2)) == (("a", 2),)
        assert parse_selection(["a", Axis("b", 3)]) == (("a", None), ("b", 3))
        assert parse_selection(("a", "b")) == (("a", None), ("b", None))
        assert parse_selection({"a": 2, "b": None}) == (("a", 2), ("b", None))
        assert parse_selection([]) == ()
        assert selection_names({"x": 1, "y": 2}) == ("x", "y")

    def test_order_kept(self):
        assert selection_names(["c", "a", "b"]) == ("c", "a", "b")

    def test_duplicates(self):
        with pytest.raises(errors.DuplicateAxisError, match="'a'"):
            parse_selection(["a", Axis("a", 2)])
        with pytest.raises(errors.DuplicateAxisError):
            parse_selection(("a", "b", "a"))

    @pytest.mark.parametrize("bad", [3, None, 2.5, b"ab", ["a", 3], [None], {3: 2}])
    def test_bad_types(self, bad):
        with pytest.raises(errors.AxisSelectorError):
            parse_selection(bad)

    def test_bad_mapping_size(self):
        with pytest.raises(errors.AxisSizeError):
            parse_selection({"a": -1})
        with pytest.raises(errors.AxisSelectorError):
            parse_selection({"a": 2.5})

    def test_what_names_argument(self):
        with pytest.raises(errors.AxisSelectorError, match="my_arg"):
            parse_selection(3, what="my_arg")

    @given(st.lists(names, unique=True, max_size=5), st.data())
    def test_sequence_roundtrip(self, ns, data):
        sizes = [data.draw(st.none() | st.integers(0, 9)) for _ in ns]
        sel = [n if s is None else Axis(n, s) for n, s in zip(ns, sizes)]
        assert parse_selection(sel) == tuple(zip(ns, sizes))
        assert parse_selection(dict(zip(ns, sizes))) == tuple(zip(ns, sizes))

    def test_to_axes(self):
        assert to_axes({"a": 2, "b": 3}) == (Axis("a", 2), Axis("b", 3))
        assert to_axes(Axis("a", 2)) == (Axis("a", 2),)
        assert to_axes([Axis("a", 2)]) == (Axis("a", 2),)
        with pytest.raises(errors.AxisSelectorError, match="needs a size"):
            to_axes(["a"])
        with pytest.raises(errors.AxisSelectorError, match="needs a size"):
            to_axes({"a": None})
