"""`python -m bngap` runs the command line."""

from .cli import main

main(prog_name="bngap")
