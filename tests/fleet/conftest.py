"""Fixtures of the fleet tests: the stores' own, SQLite and PostgreSQL alike."""

from tests.stores.conftest import any_url, pg_url, store  # noqa: F401  (fixtures, used by name)
