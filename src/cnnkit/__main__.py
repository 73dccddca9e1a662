"""``python -m cnnkit ...`` (what ``torchrun -m cnnkit train ...`` runs)."""

import sys

from cnnkit.cli import main

sys.exit(main())
