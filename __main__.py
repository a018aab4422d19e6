"""`python -m labelopt ...`: the same command line as the `labelopt` script (torchrun's -m uses it)."""
from labelopt.cli import main

main(prog_name="labelopt")
