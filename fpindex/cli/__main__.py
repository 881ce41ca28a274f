"""`python -m fpindex.cli`: the same as the `fpindex` command."""

from . import main

main()
