"""flipsearch: find privileged safety contexts that flip a model's unsafe answers to safe ones.

The pipeline, one module per stage: ``models`` -> ``engines`` -> ``judges`` ->
``scoring`` -> ``sweep`` -> ``export``. ``opsa_train`` then trains on the exported
context.
"""

from __future__ import annotations

__version__ = "0.1.0"
