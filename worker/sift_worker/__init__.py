"""Sift worker: runs a SelectionRun locally or inside the Job."""
