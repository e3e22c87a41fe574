"""`python -m stream_infer.cli` runs the command line (used by tests and by environments without the script)."""

from stream_infer.cli import main

main()
