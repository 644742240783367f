"""python -m msd_fast.lm (cli.py). A Ctrl-C while the imports run ends with one line and status 130
(msd_fast/interrupt.py), as one during the work does."""
import sys

from .cli import main

sys.exit(main())
