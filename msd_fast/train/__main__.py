"""`python -m msd_fast.train`. A Ctrl-C while the imports run ends with one line and status 130, as one later does."""
import sys

try:
    from .cli import run_and_exit
except KeyboardInterrupt:
    print("[msd_fast] interrupted by Ctrl-C before training started; nothing was written", file=sys.stderr)
    sys.exit(130)

run_and_exit()
