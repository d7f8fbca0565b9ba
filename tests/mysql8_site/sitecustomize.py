"""Loaded by every Python process the tests start (PYTHONPATH): the MySQL 8 guard."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests import mysql8_guard

mysql8_guard.install()
