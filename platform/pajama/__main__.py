"""`python -m pajama` is the `pajama` command."""

import sys

from pajama.cli import main

sys.exit(main())
