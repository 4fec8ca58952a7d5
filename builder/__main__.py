"""`python -m builder ...` is the same as `builder ...`."""

import sys

from builder.cli import main

sys.exit(main())
