"""`python -m kernelkit ...` (and `torchrun -m kernelkit tune ...`): the `kernelkit` command."""

import sys

from kernelkit.cli import main

sys.exit(main())
