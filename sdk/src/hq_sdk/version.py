"""The version of the ``hq-sdk`` distribution (it follows the server's)."""

__version__ = "0.1.0"
