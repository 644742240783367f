"""python -m msd_fast.lm (cli.py). A Ctrl-C while the imports run (the first second or so) ends with one line
and status 130, as one during the work does."""
import sys

try:
    from .cli import main
except KeyboardInterrupt:
    import os

    print("[msd_fast.lm] interrupted by Ctrl-C", file=sys.stderr, flush=True)
    os._exit(130)  # as msd_fast/__init__.py: SystemExit would still end by SIGINT

sys.exit(main())
