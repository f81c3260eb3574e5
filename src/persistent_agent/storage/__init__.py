"""Storage: one SQLCipher file (``database``), the file layout (``layout``), and
the runtime's ``StorageProvider`` over them (``provider``, ``provider_factory``).

This ``__init__`` imports nothing, so ``layout`` stays usable without the
third-party packages (``make init`` needs it before any install).
"""
