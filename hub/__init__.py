"""The hub: ingest, deduplication, storage and the HTTP API.

``hub`` never imports ``edge_agent``; both share only ``coldchain``.
"""
