"""`python -m tuner` is the `tuner` command (how `--workers` starts its worker processes)."""

from tuner.cli import main

main()
