"""Tests of the notes example: make ``gatehouse_notes`` importable (it is not installed with Gatehouse)."""

import pathlib
import sys

HERE = str(pathlib.Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
