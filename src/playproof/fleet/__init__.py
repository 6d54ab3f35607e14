"""The fleet simulator, its simulated clock, and the reconciliation oracle (docs/fleet.md).

An outer layer, like the CLI: it drives the real device SDK against a real
service and compares what every device recorded with what the service holds.
"""
