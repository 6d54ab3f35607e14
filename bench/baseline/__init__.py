"""The naive ingest service a team would write first: the benchmark's baseline."""
