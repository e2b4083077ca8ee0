"""Cluster tooling. ``cluster.local_cluster`` is importable from the repository root
(``from cluster import local_cluster``) and still runs as a script: ``python cluster/local_cluster.py ...``.

Not part of the installed ``nas-service`` distribution: it is used from a checkout (tests, docs).
"""
