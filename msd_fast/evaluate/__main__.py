"""`python -m msd_fast.evaluate`."""
import sys

from .cli import main

sys.exit(main())
