"""python -m msd_fast.lm (cli.py). A Ctrl-C while the imports run (the first second or so) ends with one line
and status 130, as one during the work does."""
import sys

try:
    from .cli import main
except KeyboardInterrupt:
    print("[msd_fast.lm] interrupted by Ctrl-C", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
