"""`python -m msd_fast.train`. A Ctrl-C while the imports run ends with one line and status 130, as one later does."""
import sys

try:
    from .cli import run_and_exit
except KeyboardInterrupt:
    import os

    print("[msd_fast] interrupted by Ctrl-C before training started; nothing was written", file=sys.stderr, flush=True)
    os._exit(130)  # as msd_fast/__init__.py: SystemExit would still end by SIGINT

run_and_exit()
