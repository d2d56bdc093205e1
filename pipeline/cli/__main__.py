"""`python -m pipeline.cli ...` is `interloom ...`."""

import sys

from pipeline.cli import main

sys.exit(main())
