"""Sift operator: turns SelectionRuns into hardened worker Jobs."""
