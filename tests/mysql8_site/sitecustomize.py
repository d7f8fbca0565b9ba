"""Loaded by every Python process the tests start (PYTHONPATH): the MySQL 8 guard.

Loaded from its file, leaving sys.path alone: the repository root on sys.path would make its
checkout importable (and pip see it installed) in every process, wheels built included.
"""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "spotler_outbox_tests_mysql8_guard", Path(__file__).resolve().parents[1] / "mysql8_guard.py")
if _spec is not None and _spec.loader is not None:
    _guard = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_guard)
    _guard.install()
