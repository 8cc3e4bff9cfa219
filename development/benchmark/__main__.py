"""``python -m development.benchmark``: see the package's docstring."""

import sys

from development.benchmark.run import main

if __name__ == "__main__":
    sys.exit(main())
