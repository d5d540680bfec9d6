"""cleancut: application-consistent backups of whole applications at one consistent cut."""

__version__ = "0.1.0"
