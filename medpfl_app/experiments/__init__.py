"""Experiments over the pure packages: the verdict battery (and, later, grids, sweeps and studies)."""
