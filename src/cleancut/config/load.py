"""Reading config files: TOML in, validated models out, and errors that name file, key and fix."""

from __future__ import annotations

import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from cleancut.config.application import AppConfig, Host
from cleancut.config.guest import GuestConfig
from cleancut.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class LoadedApp:
    """An application config and the file it came from (relative paths already resolved)."""

    config: AppConfig
    path: Path


def read_toml(path: Path) -> dict[str, Any]:
    """The parsed TOML of ``path``, or a ConfigError naming the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("no such file", file=str(path), hint="check the path") from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=str(path)) from exc
    return parse_toml(text, str(path))


def parse_toml(text: str, file: str) -> dict[str, Any]:
    """The parsed TOML ``text`` of ``file``, or a ConfigError naming the file and line."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", file=file) from exc


def validate(model: type[M], data: dict[str, Any], file: str) -> M:
    """``model`` built from ``data``; every problem is reported with its key and what is valid."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(model, error) for error in exc.errors()]
        first_key = problems[0][0]
        if len(problems) == 1:
            raise ConfigError(problems[0][1], file=file, key=first_key or None) from None
        lines = "\n".join(f"  {key or '(top level)'}: {text}" for key, text in problems)
        raise ConfigError(f"{len(problems)} problems:\n{lines}", file=file) from None


def load_app(path: Path) -> LoadedApp:
    """The application config at ``path``; relative paths in it are taken from its folder."""
    path = path.absolute()
    config = validate(AppConfig, read_toml(path), str(path))
    base = path.parent
    hosts = {name: _resolve_host(host, base) for name, host in config.hosts.items()}
    repo = config.repository
    if repo.password_file is not None:
        repo = repo.model_copy(update={"password_file": base / repo.password_file})
    update: dict[str, Any] = {"hosts": hosts, "repository": repo}
    if config.catalog is not None:
        update["catalog"] = base / config.catalog
    return LoadedApp(config=config.model_copy(update=update), path=path)


def _resolve_host(host: Host, base: Path) -> Host:
    """``host`` with its relative paths taken from the application file's folder."""
    update = {
        key: base / value
        for key in ("guest_config", "identity_file", "known_hosts")
        if (value := getattr(host, key)) is not None
    }
    return host.model_copy(update=update)


def load_guest(path: Path) -> GuestConfig:
    """The guest config at ``path`` (permission checks are the guest's job, before this)."""
    return validate(GuestConfig, read_toml(path), str(path))


def parse_guest(data: bytes, file: str) -> GuestConfig:
    """A guest config from bytes already read (from a checked descriptor, without a race)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text: {exc}", file=file) from exc
    return validate(GuestConfig, parse_toml(text, file), file)


def _describe(model: type[BaseModel], error: Any) -> tuple[str, str]:
    loc = [str(part) for part in error["loc"]]
    kind = error["type"]
    if kind == "extra_forbidden":
        parent = _model_at(model, list(error["loc"][:-1]))
        valid = ", ".join(parent.model_fields) if parent else "see `cleancut config generate`"
        return ".".join(loc), f"unknown key {loc[-1]!r}; valid keys here: {valid}"
    if kind == "missing":
        return ".".join(loc), "required key is missing"
    message = str(error["msg"]).removeprefix("Value error, ")
    return ".".join(loc), message


def _model_at(model: type[BaseModel], loc: list[Any]) -> type[BaseModel] | None:
    """The model class that validates the table at ``loc``, to list its valid keys."""
    current: Any = model
    index = 0
    while index < len(loc):
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(loc[index]))
        if field is None:
            return None
        current = field.annotation
        index += 1
        while True:
            origin = typing.get_origin(current)
            args = typing.get_args(current)
            if origin in (typing.Union, types.UnionType):
                current = next((a for a in args if a is not type(None)), None)
            elif origin is dict:
                current, index = args[1], index + 1
            elif origin is list:
                current, index = args[0], index + 1
            elif origin is typing.Annotated:
                current = args[0]
            else:
                break
    if isinstance(current, type) and issubclass(current, BaseModel):
        return current
    return None
