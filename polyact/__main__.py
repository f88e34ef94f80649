"""``python -m polyact`` runs the ``polyact`` command."""
import sys

from .cli import main

sys.exit(main())
