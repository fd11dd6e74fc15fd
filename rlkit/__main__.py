"""`python -m rlkit`: the form torchrun and accelerate launch."""

import os
import sys

from rlkit.cli import main

code = main()
if code == 130:
    # An interrupted command leaves at once. A KeyboardInterrupt that arrived inside a library's nested
    # evaluation (code run through PyRun_String while it imports) sets a flag that CPython checks only after
    # `python -m` returns, and it then ends the process by SIGINT instead of exit status 130; the `rlkit` script
    # exits through another path that does not check it. Everything is closed and flushed by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
