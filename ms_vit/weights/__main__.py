"""``python -m ms_vit.weights``: the weight sets by name (``ms_vit.weights.registry``)."""
import sys

from .registry import main

sys.exit(main())
