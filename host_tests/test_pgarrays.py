"""cghub.pgarrays against a real PostgreSQL: what each list type sends is the array PostgreSQL reads
back, element for element, and byte for byte what PostgreSQL's own array_send makes of the same
values (sent by psycopg's generic, element by element, dumper)."""

import psycopg
import pytest
from cghub import pgarrays
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

KINDS = [
    (pgarrays.Int8s, "bigint", st.integers(-(2**63), 2**63 - 1)),
    (pgarrays.Int4s, "int", st.integers(-(2**31), 2**31 - 1)),
    (pgarrays.Float8s, "float8", st.floats(allow_nan=False)),
    (pgarrays.Texts, "text", st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))),
    (pgarrays.Byteas, "bytea", st.binary(max_size=64)),
]


@pytest.fixture(scope="module")
def conn(postgres):
    with psycopg.connect(postgres.uri, autocommit=True) as c:
        pgarrays.register(c)
        yield c


@pytest.mark.parametrize("kind,sqltype,elements", KINDS, ids=[k[1] for k in KINDS])
def test_an_array_round_trips_through_postgresql(conn, kind, sqltype, elements):
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.lists(elements, max_size=40))
    def check(values):
        (back,) = conn.execute(f"SELECT %b::{sqltype}[]", (kind(values),)).fetchone()
        assert back == values
        # one row per element, in order, through unnest() as the hub's batch writes use it
        rows = conn.execute(f"SELECT v FROM unnest(%b::{sqltype}[]) WITH ORDINALITY AS t(v, n) ORDER BY n",
                            (kind(values),)).fetchall()  # fmt: skip
        assert [r[0] for r in rows] == values

    check()


@pytest.mark.parametrize("kind,sqltype,elements", KINDS, ids=[k[1] for k in KINDS])
def test_the_bytes_are_psycopgs_own(conn, kind, sqltype, elements):
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.lists(elements, min_size=1, max_size=40))
    def check(values):
        ours = pgarrays.DUMPERS[kind](kind, conn.adapters).dump(kind(values))
        # PostgreSQL's own array_send of the same values (sent by psycopg's generic dumper, cast there)
        theirs = conn.execute(f"SELECT array_send(%b::{sqltype}[])", (list(values),)).fetchone()[0]
        assert bytes(ours) == bytes(theirs)

    check()


def test_an_empty_array_is_what_postgresql_sends_for_empty(conn):
    for kind, sqltype, _ in KINDS:
        ours = pgarrays.DUMPERS[kind](kind, conn.adapters).dump(kind())
        (theirs,) = conn.execute(f"SELECT array_send('{{}}'::{sqltype}[])").fetchone()
        assert bytes(ours) == bytes(theirs), sqltype
