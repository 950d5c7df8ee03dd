"""Classification networks (by name) and the Lightning module that trains them."""

from medpfl_app.models.networks import NETWORKS, build_network

__all__ = ["NETWORKS", "build_network"]
