"""The version string, at the bottom of the package: every module can import it without reaching up."""

__version__ = "0.1.0"
