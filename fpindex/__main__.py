"""`python -m fpindex`: the same command line as `fpindex`."""

from .cli import main

if __name__ == "__main__":
    main()
