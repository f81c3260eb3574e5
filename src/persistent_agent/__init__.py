"""persistent-agent: the Naylence persistence example in Python, on SQLCipher.

The file tree is the architecture:

- ``agent``: ``PersistentAgent`` and its state model (``store_value`` /
  ``retrieve_value`` at ``storage@fame.fabric``).
- ``storage_provider`` / ``storage_provider_factory``: whole-file encrypted
  storage plugged into the runtime through its entry points and profiles.
- ``database``: opening one SQLCipher file with a key; ``keys``: the master key.
- ``node``: what the sentinel and agent entry points share.
- ``config_files``: generating config/.env.* with a key (``make init``).
- ``errors``: every user-facing error, each one line.
"""

__version__ = "0.1.0"

AGENT_ADDR = "storage@fame.fabric"
