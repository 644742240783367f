"""`python -m msd_fast.train`."""
import sys

from .cli import main

sys.exit(main())
