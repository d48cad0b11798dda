"""Schemas: what Delta Lake can store, and whether new data fits a dataset's schema.

A first write turns Arrow types into the nearest ones Delta stores (unsigned integers into
the next wider signed type, timestamps into microseconds, large or view strings into
strings, an all-null column into a string). An append must fit the table: the same columns,
each of a type that converts without loss (a narrower integer into a wider one, an integer
into a float, a float into a double). Anything else is a :class:`SchemaMismatch` raised
before a byte is written; ``evolve`` lets new columns in (and missing ones become nulls).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from aimesh.errors import InvalidData, SchemaMismatch

__all__ = ["AppendPlan", "conform", "delta_schema", "delta_type", "plan_append"]

_WIDER_SIGNED = {pa.uint8(): pa.int16(), pa.uint16(): pa.int32(), pa.uint32(): pa.int64()}


def delta_type(t: pa.DataType, column: str) -> pa.DataType:
    """The Arrow type a Delta table stores for values of type ``t``."""
    if pa.types.is_dictionary(t):
        return delta_type(t.value_type, column)
    if pa.types.is_null(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return pa.binary()
    if pa.types.is_unsigned_integer(t):
        # uint64 has no wider signed type: values above 2**63-1 fail the write, loudly.
        return _WIDER_SIGNED.get(t, pa.int64())
    if pa.types.is_float16(t):
        return pa.float32()
    if pa.types.is_timestamp(t):
        return pa.timestamp("us", t.tz)
    if pa.types.is_date64(t):
        return pa.date32()
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_list_view(t):
        item = t.value_field
        return pa.list_(item.with_type(delta_type(item.type, column)))
    if pa.types.is_struct(t):
        return pa.struct([f.with_type(delta_type(f.type, column)) for f in t.fields])
    if pa.types.is_map(t):
        return pa.map_(delta_type(t.key_type, column), delta_type(t.item_type, column))
    if (
        pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_boolean(t)
        or pa.types.is_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_date32(t)
        or pa.types.is_decimal128(t)
    ):
        return t
    raise InvalidData(
        f"column {column!r} has type {t}, which Delta Lake cannot store; "
        "convert it to a string, a number or a timestamp first",
        column=column,
        type=str(t),
    )


def delta_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` with every type turned into the one a Delta table stores (all nullable)."""
    names = [f.name for f in schema]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidData(f"columns appear twice: {', '.join(duplicates)}", columns=duplicates)
    if not names:
        raise InvalidData("the data has no columns")
    return pa.schema([pa.field(f.name, delta_type(f.type, f.name)) for f in schema])


def _fits(source: pa.DataType, target: pa.DataType) -> bool:
    """Whether every value of type ``source`` converts to ``target`` without loss."""
    if source == target or pa.types.is_null(source):
        return True
    if pa.types.is_dictionary(source):
        return _fits(source.value_type, target)
    if pa.types.is_integer(source) and pa.types.is_integer(target):
        if pa.types.is_signed_integer(source) and pa.types.is_unsigned_integer(target):
            return False
        if pa.types.is_unsigned_integer(source) and pa.types.is_signed_integer(target):
            return bool(target.bit_width > source.bit_width)
        return bool(target.bit_width >= source.bit_width)
    if pa.types.is_integer(source) and pa.types.is_floating(target):
        return bool(target.bit_width == 64 or source.bit_width <= 16)
    if pa.types.is_floating(source) and pa.types.is_floating(target):
        return bool(target.bit_width >= source.bit_width)
    strings = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)
    if any(s(source) for s in strings) and any(s(target) for s in strings):
        return True
    binaries = (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_binary_view)
    if any(b(source) for b in binaries) and any(b(target) for b in binaries):
        return True
    if pa.types.is_timestamp(source) and pa.types.is_timestamp(target):
        return (source.tz is None) == (target.tz is None)
    if pa.types.is_date(source) and pa.types.is_date(target):
        return True
    if pa.types.is_decimal(source) and pa.types.is_decimal(target):
        return bool(
            target.scale >= source.scale
            and target.precision - target.scale >= source.precision - source.scale
        )
    if pa.types.is_struct(source) and pa.types.is_struct(target):
        wanted = {f.name: f.type for f in target.fields}
        return all(f.name in wanted and _fits(f.type, wanted[f.name]) for f in source.fields)
    source_lists = pa.types.is_list(source) or pa.types.is_large_list(source)
    if source_lists and pa.types.is_list(target):
        return _fits(source.value_type, target.value_type)
    return False


@dataclass(frozen=True)
class AppendPlan:
    """How new data goes into an existing table: the schema to write, and what changes."""

    target: pa.Schema
    """Every batch is converted to this schema before it is written."""
    new_columns: list[str]
    missing_columns: list[str]


def plan_append(dataset: str, table: pa.Schema, data: pa.Schema, *, evolve: bool) -> AppendPlan:
    """Check that ``data`` fits ``table``; raise :class:`SchemaMismatch` naming every problem."""
    have = {f.name: f.type for f in data}
    wanted = {f.name: f.type for f in table}
    problems = [
        f"column {f.name!r} is {wanted[f.name]} in the dataset but {f.type} in the data"
        for f in data
        if f.name in wanted and not _fits(f.type, wanted[f.name])
    ]
    new = [f.name for f in data if f.name not in wanted]
    missing = [f.name for f in table if f.name not in have]
    if not evolve:
        if new:
            problems.append("new columns " + ", ".join(repr(n) for n in new))
        if missing:
            problems.append("missing columns " + ", ".join(repr(n) for n in missing))
    if problems:
        hint = (
            "--evolve adds new columns and fills missing ones with nulls" if new or missing else ""
        )
        raise SchemaMismatch(dataset, problems, hint=hint if not evolve else "")
    added = [pa.field(n, delta_type(have[n], n)) for n in new]
    return AppendPlan(pa.schema([*table, *added]), new_columns=new, missing_columns=missing)


def conform(batch: pa.RecordBatch, target: pa.Schema, dataset: str) -> pa.RecordBatch:
    """``batch`` with the columns of ``target``, in its order and types (nulls where absent)."""
    if batch.schema.equals(target, check_metadata=False):
        return batch
    present = set(batch.schema.names)
    columns = []
    for f in target:
        if f.name not in present:
            columns.append(pa.nulls(batch.num_rows, f.type))
            continue
        column = batch.column(f.name)
        if column.type != f.type:
            try:
                column = pc.cast(column, f.type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise SchemaMismatch(
                    dataset,
                    [f"column {f.name!r}: a value does not fit {f.type} ({_first_line(exc)})"],
                ) from exc
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, schema=target)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
