"""Prometheus metrics of a node: its storage, keys, certificates, backups, calls and refusals.

One listener on the storage-events hook (``listener``), a few gauges read on
scrape (``gauges``), the agent's calls (``rpcs``) and the sentinel's refused
attaches (``refusals``), every series declared once (``series``) and served
on loopback by each node (``endpoint``). See docs/metrics.md.
"""
