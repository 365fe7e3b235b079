"""Where images come from. Today: a local folder or mounted volume."""

from sift_worker.sources.volume import iter_volume_files, read_relevant_filenames

__all__ = ["iter_volume_files", "read_relevant_filenames"]
