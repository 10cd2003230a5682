"""The bench's own tests: `.venv/bin/python -m pytest bench/tests` (not part of `make test`)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
