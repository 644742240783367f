"""`python -m msd_fast.train`. A Ctrl-C while the imports run ends with one line and status 130
(msd_fast/interrupt.py), as one later does."""
from .cli import run_and_exit

run_and_exit()
