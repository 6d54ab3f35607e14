"""Server tests that drive a store directly (committer, replay) share the store fixtures."""

from tests.stores.conftest import any_url, pg_url, store  # noqa: F401 (fixtures, by name)
