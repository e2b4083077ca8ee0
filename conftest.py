"""Puts the repository root on the import path for a bare `pytest` too (tests import `tests.helpers`, `cluster`)."""
