"""`python -m msd_fast.train`."""
from .cli import run_and_exit

run_and_exit()
