"""Puts the repository root on sys.path so tests run from a plain checkout."""
