"""`python -m mdiexit.cli ...`: the same as the `mdiexit` command."""

import sys

from mdiexit.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
