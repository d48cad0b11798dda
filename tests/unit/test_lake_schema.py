"""Pure parts of the lake, by tables: names, references, type fitting, the JSON array reader."""

from __future__ import annotations

import io
import json
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aimesh.errors import InvalidData, InvalidName, InvalidRequest, SchemaMismatch
from aimesh.lake import DatasetRef, check_dataset_name
from aimesh.lake._jsonarray import iter_json_array
from aimesh.lake.schema import conform, delta_schema, plan_append


@pytest.mark.parametrize(
    ("text", "ref"),
    [
        ("transactions", DatasetRef("transactions")),
        ("transactions@3", DatasetRef("transactions", 3)),
        ("tx_2024@0", DatasetRef("tx_2024", 0)),
        ("tx@latest", DatasetRef("tx")),
        (" tx@12 ", DatasetRef("tx", 12)),
    ],
)
def test_dataset_refs_parse(text: str, ref: DatasetRef) -> None:
    assert DatasetRef.parse(text) == ref
    assert DatasetRef.parse(str(ref)) == ref


@pytest.mark.parametrize("text", ["tx@", "tx@x", "tx@-1", "tx@1.5", "@3"])
def test_bad_dataset_refs_are_refused(text: str) -> None:
    with pytest.raises(InvalidRequest):
        DatasetRef.parse(text)


@pytest.mark.parametrize(
    "name", ["Tx", "1tx", "tx-1", "tx.1", "", "drop table", "x" * 129, "tx;", "../etc"]
)
def test_unsafe_dataset_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidName):
        check_dataset_name(name)


@pytest.mark.parametrize(
    ("source", "stored"),
    [
        (pa.uint8(), pa.int16()),
        (pa.uint32(), pa.int64()),
        (pa.uint64(), pa.int64()),
        (pa.timestamp("s"), pa.timestamp("us")),
        (pa.timestamp("ns", "UTC"), pa.timestamp("us", "UTC")),
        (pa.large_string(), pa.string()),
        (pa.dictionary(pa.int32(), pa.string()), pa.string()),
        (pa.null(), pa.string()),
        (pa.float16(), pa.float32()),
        (pa.date64(), pa.date32()),
        (pa.list_(pa.uint8()), pa.list_(pa.int16())),
        (pa.float64(), pa.float64()),
    ],
)
def test_first_write_stores_the_nearest_delta_type(
    source: pa.DataType, stored: pa.DataType
) -> None:
    assert delta_schema(pa.schema([("c", source)])).field("c").type == stored


def test_types_delta_cannot_store_and_duplicate_columns_are_invalid_data() -> None:
    with pytest.raises(InvalidData, match="time64"):
        delta_schema(pa.schema([("t", pa.time64("us"))]))
    with pytest.raises(InvalidData, match="twice"):
        delta_schema(pa.schema([("a", pa.int64()), ("a", pa.string())]))


@pytest.mark.parametrize(
    ("data", "table", "fits"),
    [
        (pa.int32(), pa.int64(), True),
        (pa.int64(), pa.int32(), False),
        (pa.uint32(), pa.int64(), True),
        (pa.uint64(), pa.int64(), False),
        (pa.int64(), pa.float64(), True),
        (pa.int64(), pa.float32(), False),
        (pa.float32(), pa.float64(), True),
        (pa.float64(), pa.int64(), False),
        (pa.string(), pa.int64(), False),
        (pa.large_string(), pa.string(), True),
        (pa.null(), pa.timestamp("us"), True),
        (pa.timestamp("ns"), pa.timestamp("us"), True),
        (pa.timestamp("us"), pa.timestamp("us", "UTC"), False),
        (pa.decimal128(5, 2), pa.decimal128(10, 2), True),
        (pa.decimal128(10, 4), pa.decimal128(10, 2), False),
        (pa.struct([("x", pa.int32())]), pa.struct([("x", pa.int64())]), True),
        (pa.list_(pa.int64()), pa.list_(pa.string()), False),
    ],
)
def test_which_types_fit_a_column_on_append(
    data: pa.DataType, table: pa.DataType, fits: bool
) -> None:
    check = lambda: plan_append(  # noqa: E731
        "tx", pa.schema([("c", table)]), pa.schema([("c", data)]), evolve=False
    )
    if fits:
        assert check().target == pa.schema([("c", table)])
    else:
        with pytest.raises(SchemaMismatch, match="column 'c'"):
            check()


def test_a_mismatch_names_every_problem_and_evolve_lets_columns_in() -> None:
    table = pa.schema([("id", pa.int64()), ("label", pa.string())])
    data = pa.schema([("id", pa.string()), ("extra", pa.uint8())])

    with pytest.raises(SchemaMismatch) as caught:
        plan_append("tx", table, data, evolve=False)
    assert caught.value.problems == [
        "column 'id' is int64 in the dataset but string in the data",
        "new columns 'extra'",
        "missing columns 'label'",
    ]
    assert "--evolve" in caught.value.message

    plan = plan_append("tx", table, pa.schema([("extra", pa.uint8())]), evolve=True)
    assert plan.target == pa.schema([*table, ("extra", pa.int16())])
    assert (plan.new_columns, plan.missing_columns) == (["extra"], ["id", "label"])
    batch = pa.record_batch({"extra": pa.array([1, 2], pa.uint8())})
    assert conform(batch, plan.target, "tx").to_pylist() == [
        {"id": None, "label": None, "extra": 1},
        {"id": None, "label": None, "extra": 2},
    ]


def test_conform_refuses_a_value_that_does_not_fit() -> None:
    batch = pa.record_batch({"c": pa.array([2**63 + 1], pa.uint64())})
    with pytest.raises(SchemaMismatch, match="does not fit int64"):
        conform(batch, pa.schema([("c", pa.int64())]), "tx")


def _elements(text: str, read_size: int = 3, max_element: int = 1000) -> list[Any]:
    stream = io.BytesIO(text.encode())
    return list(
        iter_json_array(stream, read_size=read_size, max_element_bytes=max_element, name="f")
    )


@pytest.mark.parametrize(
    ("text", "elements"),
    [
        ("[]", []),
        ("  [ ]  ", []),
        ('[{"a": 1}]', [{"a": 1}]),
        ('[{"a": 12345}, {"a": "x,]"}]', [{"a": 12345}, {"a": "x,]"}]),
        ("[1, 22, 333]", [1, 22, 333]),
        ('\n[\n {"é": "ü"} ,\n {"b": [1, [2]]}\n]\n', [{"é": "ü"}, {"b": [1, [2]]}]),
    ],
)
def test_json_array_elements_stream_out(text: str, elements: list[Any]) -> None:
    assert _elements(text) == elements


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ('{"a": 1}', "expected a JSON array"),
        ("[1, 2", "not closed"),
        ("[1 2]", "expected ',' or ']'"),
        ("[1, }]", "invalid JSON"),
        ('[{"a": "' + "x" * 2000 + '"}]', "invalid JSON"),
    ],
)
def test_broken_json_arrays_are_invalid_data(text: str, said: str) -> None:
    with pytest.raises(InvalidData, match=said):
        _elements(text)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text() | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@given(st.lists(json_values, max_size=8), st.integers(min_value=1, max_value=17), st.booleans())
def test_json_array_reader_agrees_with_json_loads(
    elements: list[Any], read_size: int, indent: bool
) -> None:
    text = json.dumps(elements, indent=1 if indent else None)
    assert _elements(text, read_size=read_size, max_element=10**6) == json.loads(text)
