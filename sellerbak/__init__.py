"""sellerbak: encrypted, verified backups of an online shop's data."""

__version__ = "0.1.0"
