"""Bottom layer: registry, config schema and loading, logging, distributed helpers, optimisers.

Nothing here imports other parts of the package.
"""
