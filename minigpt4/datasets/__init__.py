"""Datasets, builders, streaming JSON readers, splits; importing it registers the builders."""

from minigpt4.datasets import builders  # noqa: F401  (registration)
