"""Configuration: the application file and the guest file, as strict pydantic models."""

from cleancut.config.application import AppConfig, Host, Repository
from cleancut.config.base import Duration, format_duration, parse_duration
from cleancut.config.guest import Database, GuestConfig, Hook, HooksImport, Volume
from cleancut.config.load import LoadedApp, load_app, load_guest, read_toml, validate

__all__ = [
    "AppConfig",
    "Database",
    "Duration",
    "GuestConfig",
    "Hook",
    "HooksImport",
    "Host",
    "LoadedApp",
    "Repository",
    "Volume",
    "format_duration",
    "load_app",
    "load_guest",
    "parse_duration",
    "read_toml",
    "validate",
]
