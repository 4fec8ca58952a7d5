"""`python -m builder ...` is the same as `builder ...`."""

import sys

from builder.doors.cli import main

sys.exit(main())
