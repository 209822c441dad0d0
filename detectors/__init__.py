"""Detectors: the registry, network classification, windows and the detectors."""
