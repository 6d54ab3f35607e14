"""`python -m playproof` runs the CLI."""

from playproof.cli import main

main()
