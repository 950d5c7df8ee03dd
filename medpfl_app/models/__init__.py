"""Classification networks (by name), the server's global-model holder and DP-SGD-compatible conversion."""

from medpfl_app.models.networks import NETWORKS, build_network

__all__ = ["NETWORKS", "build_network"]
