"""Forage: archive every release of package registries to IPFS and Filecoin, and answer
"for these packages, where are the bytes?" fast.

This package composes ``indexers`` and ``storage``: configuration, database, job pipeline,
scheduler, HTTP API, mirror and the command line.
"""

__version__ = "0.1.0"
