"""Keys: the master key, its parsing and the per-database keys derived from it.

Standard library only (``make init`` runs before any install), and nothing
here knows about files or where databases live.
"""
