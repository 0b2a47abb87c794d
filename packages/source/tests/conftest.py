"""Make the test helper modules in this directory importable.

Tests run with ``--import-mode=importlib``, which does not put the test
directory on ``sys.path``; the helper modules (the semantics corpus) are plain
modules, deliberately not ``test_*`` files so pytest does not rewrite them.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
