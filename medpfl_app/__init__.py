"""MedPFL: gradient-inversion privacy audit and defenses for federated learning on medical images."""

__version__ = "0.1.0"
