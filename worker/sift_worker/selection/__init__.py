"""Selection strategies."""

from sift_worker.selection.kcenter import KCenterResult, k_center_greedy, samples_to_select

__all__ = ["KCenterResult", "k_center_greedy", "samples_to_select"]
