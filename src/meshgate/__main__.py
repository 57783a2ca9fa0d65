"""`python -m meshgate` runs the command line."""

from meshgate.cli import main

main()
