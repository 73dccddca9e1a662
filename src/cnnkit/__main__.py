"""``python -m cnnkit ...`` (what ``torchrun -m cnnkit train ...`` runs)."""

import sys

from .cli import main

sys.exit(main())
