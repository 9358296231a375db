"""Datasets: synthetic scene simulation, adapters, manifests, features."""
