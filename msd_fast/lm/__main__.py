"""python -m msd_fast.lm (cli.py)."""
import sys

from .cli import main

sys.exit(main())
