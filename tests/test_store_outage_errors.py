"""A connection the server's death left broken is "unavailable" (retry),
never a refusal of the value written (found by the fault suite's PostgreSQL
kill -9: the engine stored a SUCCESSFUL call without its reply)."""

import asyncpg

from fleetrpc.errors import StoreUnavailableError
from fleetrpc.store.db import postgres_error


def test_a_broken_connection_state_is_unavailable_not_a_refusal():
    e = asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in progress")
    assert isinstance(postgres_error(e, "querying", "127.0.0.1:5432/db"), StoreUnavailableError)


def test_a_refused_value_is_still_a_refusal():
    e = asyncpg.UntranslatableCharacterError("unsupported Unicode escape sequence")
    assert not isinstance(postgres_error(e, "querying", "127.0.0.1:5432/db"), StoreUnavailableError)
