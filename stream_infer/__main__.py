"""`python -m stream_infer`: the `stream-infer` command line, for environments without the script."""

from stream_infer.cli import main

main(prog_name="stream-infer")
