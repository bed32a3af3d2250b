"""One-dimensional PostgreSQL arrays in binary, packed in one call each: the columns of the hub's
batch writes (pgstore's unnest() statements).

psycopg's generic list dumper packs an array element by element in Python (a length and a value,
each through a dumper): with eight columns of 256 rows per batch that was the largest single item
of the hub's CPU per datagram on PostgreSQL. These list types say what their elements are, so the
whole array is one struct.pack (numbers) or one join (text, bytes). The wire format is PostgreSQL's
array_send: ndim, has-null flag, element type oid, then per dimension its length and lower bound,
then per element its length and bytes. None is not an element here (no column of the batch is
nullable); a None fails loudly in struct.pack or encode.

    register(conn)                        # once per connection
    cur.execute("... unnest(%b::bigint[]) ...", [Int8s(ids)])
"""

from __future__ import annotations

import struct

from psycopg import adapt, pq

_HEAD = struct.Struct("!iiiii")  # ndim 1, no nulls, element oid, length, lower bound 1
_EMPTY = struct.Struct("!iii")
_LEN = struct.Struct("!i")

# (element oid, array oid): PostgreSQL's fixed catalogue numbers (pg_type.dat).
INT4 = (23, 1007)
INT8 = (20, 1016)
FLOAT8 = (701, 1022)
TEXT = (25, 1009)
BYTEA = (17, 1001)


class Int8s(list):
    """A bigint[] column."""


class Int4s(list):
    """An int[] column."""


class Float8s(list):
    """A float8[] column."""


class Texts(list):
    """A text[] column."""


class Byteas(list):
    """A bytea[] column."""


def _head(oids: tuple[int, int], n: int) -> bytes:
    # An empty array has no dimension at all (ndim 0), as PostgreSQL sends '{}'.
    return _HEAD.pack(1, 0, oids[0], n, 1) if n else _EMPTY.pack(0, 0, oids[0])


def _fixed(oids: tuple[int, int], code: str, size: int):
    """A dumper for fixed-size elements: every element is `size` bytes after its length."""

    class FixedDumper(adapt.Dumper):
        format = pq.Format.BINARY
        oid = oids[1]

        def dump(self, obj):
            n = len(obj)
            if not n:
                return _head(oids, 0)
            interleaved = [size] * (2 * n)
            interleaved[1::2] = obj
            return _head(oids, n) + struct.pack("!" + ("i" + code) * n, *interleaved)

    return FixedDumper


def _varying(oids: tuple[int, int], encode):
    """A dumper for elements of any length (text as UTF-8, bytes as they are)."""

    class VaryingDumper(adapt.Dumper):
        format = pq.Format.BINARY
        oid = oids[1]

        def dump(self, obj):
            datas = list(map(encode, obj))
            parts = [b""] * (2 * len(datas))  # length, bytes, length, bytes, ...: built by map, not a loop
            parts[0::2] = map(_LEN.pack, map(len, datas))
            parts[1::2] = datas
            return _head(oids, len(datas)) + b"".join(parts)

    return VaryingDumper


DUMPERS = {
    Int8s: _fixed(INT8, "q", 8),
    Int4s: _fixed(INT4, "i", 4),
    Float8s: _fixed(FLOAT8, "d", 8),
    Texts: _varying(TEXT, str.encode),
    Byteas: _varying(BYTEA, bytes),
}


def register(conn) -> None:
    """Make `conn` send these list types with the dumpers above (binary placeholders, %b)."""
    for cls, dumper in DUMPERS.items():
        conn.adapters.register_dumper(cls, dumper)
