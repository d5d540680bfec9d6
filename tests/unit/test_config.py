"""The config models and loader: durations, strict keys, cross-references, paths, errors.

Every error must name the file, the key, what was wrong and what would be valid.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cleancut.config import (
    AppConfig,
    GuestConfig,
    Volume,
    format_duration,
    load_app,
    load_guest,
    parse_duration,
)
from cleancut.config.samples import APP_SAMPLE, GUEST_SAMPLE
from cleancut.errors import ConfigError

APP = """\
name = "shop"
[repository]
url = "/var/backups/shop"
[hosts.app1]
guest_config = "/etc/cleancut/guest.toml"
"""

GUEST = """\
[volumes.orders]
path = "/srv/orders"
snapshot = "copy"
freeze = false
[databases.orders]
kind = "sqlite"
path = "/srv/orders/orders.db"
volume = "orders"
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(loader: object, path: Path) -> ConfigError:
    assert callable(loader)
    with pytest.raises(ConfigError) as caught:
        loader(path)
    assert caught.value.exit_code == 2
    assert caught.value.file == str(path.absolute())
    return caught.value


# -- durations ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("10s", 10.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("2d", 172800.0),
        ("1w", 604800.0),
        ("1.5s", 1.5),
        (7, 7.0),
        (0.25, 0.25),
        (" 3s ", 3.0),
    ],
)
def test_durations_parse(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["10 sec", "ten", "", "-1s", "10S", "1y", True, [1], None])
def test_bad_durations_say_how_to_write_one(text: object) -> None:
    with pytest.raises(ValueError, match=r'"500ms", "10s"|duration'):
        parse_duration(text)


@pytest.mark.parametrize("text", [0, "0s", "0ms"])
def test_zero_duration_is_refused(text: object) -> None:
    with pytest.raises(ValueError, match="greater than zero"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.5, "500ms"), (10, "10s"), (120, "2m"), (1.5, "1500ms"), (90, "90s")]
)
def test_durations_format_back(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)


def test_duration_in_a_file_is_converted(tmp_path: Path) -> None:
    app = write(
        tmp_path,
        "app.toml",
        APP.replace('name = "shop"', 'name = "shop"\nfreeze_timeout = "500ms"'),
    )
    assert load_app(app).config.freeze_timeout == pytest.approx(0.5)


def test_bad_duration_in_a_file_names_file_and_key(tmp_path: Path) -> None:
    app = write(
        tmp_path,
        "app.toml",
        APP.replace('name = "shop"', 'name = "shop"\nfreeze_timeout = "10 sec"'),
    )
    error = config_error(load_app, app)
    assert error.key == "freeze_timeout"
    assert "'10 sec' is not a duration" in error.message
    assert '"500ms", "10s", "2m", "1h" or "2d"' in error.message


def test_freeze_timeout_has_an_upper_bound(tmp_path: Path) -> None:
    app = write(
        tmp_path, "app.toml", APP.replace('name = "shop"', 'name = "shop"\nfreeze_timeout = "11m"')
    )
    error = config_error(load_app, app)
    assert error.key == "freeze_timeout"
    assert "above 10m" in error.message


# -- strict keys -------------------------------------------------------------------------


def test_unknown_top_level_key_lists_valid_keys(tmp_path: Path) -> None:
    app = write(tmp_path, "app.toml", 'colour = "red"\n' + APP)
    error = config_error(load_app, app)
    assert error.key == "colour"
    assert "unknown key 'colour'" in error.message
    for key in ("name", "freeze_timeout", "on_failure", "repository", "hosts"):
        assert key in error.message
    assert error.message.startswith(f"{app}: colour: unknown key")


def test_unknown_nested_key_lists_the_tables_keys(tmp_path: Path) -> None:
    app = write(tmp_path, "app.toml", APP + 'colour = "red"\n')  # lands in [hosts.app1]
    error = config_error(load_app, app)
    assert error.key == "hosts.app1.colour"
    assert "valid keys here: connect, guest_config" in error.message


def test_unknown_keys_deep_in_the_guest_file(tmp_path: Path) -> None:
    guest = write(
        tmp_path,
        "guest.toml",
        GUEST
        + '[[hooks]]\nname = "q"\npre = ["/bin/true"]\nsha256 = { pre = "'
        + "a" * 64
        + '", mid = "x" }\n[hooks_import]\nazur = "/x"\n',
    )
    error = config_error(load_guest, guest)
    assert "2 problems" in error.message
    assert "hooks.0.sha256.mid: unknown key 'mid'; valid keys here: pre, post" in error.message
    assert "hooks_import.azur: unknown key 'azur'; valid keys here: azure, gcp, qemu_ga" in (
        error.message
    )


def test_unknown_volume_key_lists_volume_keys(tmp_path: Path) -> None:
    guest = write(tmp_path, "guest.toml", GUEST.replace("freeze = false", "freez = false"))
    error = config_error(load_guest, guest)
    assert error.key == "volumes.orders.freez"
    assert "path, snapshot, image, freeze, staging" in error.message


def test_missing_keys_are_named(tmp_path: Path) -> None:
    app = write(tmp_path, "app.toml", '[repository]\nurl = "/r"\n[hosts.a]\nconnect = "local"\n')
    error = config_error(load_app, app)
    assert "name: required key is missing" in error.message
    assert 'hosts.a: connect = "local" needs guest_config' in error.message


def test_wrong_enum_value_says_what_is_valid(tmp_path: Path) -> None:
    app = write(
        tmp_path, "app.toml", APP.replace('name = "shop"', 'name = "shop"\non_failure = "skip"')
    )
    error = config_error(load_app, app)
    assert error.key == "on_failure"
    assert "'abort'" in error.message
    assert "'degrade'" in error.message


def test_two_password_sources_are_refused(tmp_path: Path) -> None:
    text = APP.replace(
        'url = "/var/backups/shop"',
        'url = "/r"\npassword_file = "p"\npassword_command = ["/bin/echo", "x"]',
    )
    error = config_error(load_app, write(tmp_path, "app.toml", text))
    assert error.key == "repository"
    assert "password_file or password_command, not both" in error.message


# -- guest rules -------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["btrfs", "reflink"])
def test_freeze_with_in_place_provider_is_refused_with_the_reason(
    tmp_path: Path, provider: str
) -> None:
    text = GUEST.replace('snapshot = "copy"', f'snapshot = "{provider}"').replace(
        "freeze = false", "freeze = true"
    )
    error = config_error(load_guest, write(tmp_path, "guest.toml", text))
    assert error.key == "volumes.orders"
    assert f'freeze = true cannot be combined with snapshot = "{provider}"' in error.message
    assert "wait for the thaw forever" in error.message
    assert "set freeze = false" in error.message


@pytest.mark.parametrize(
    ("provider", "frozen"), [("btrfs", False), ("reflink", False), ("image", True), ("copy", True)]
)
def test_freeze_defaults_to_what_is_safe(provider: str, frozen: bool) -> None:
    assert Volume(path=Path("/srv/x"), snapshot=provider).frozen is frozen


def test_database_on_an_unknown_volume_is_refused(tmp_path: Path) -> None:
    text = GUEST.replace('volume = "orders"', 'volume = "invoices"')
    error = config_error(load_guest, write(tmp_path, "guest.toml", text))
    assert "databases.orders.volume: no volume named 'invoices' (volumes: orders)" in (
        error.message
    )


@pytest.mark.parametrize(
    "path", ["/srv/invoices/orders.db", "/srv/orders-old/orders.db", "/srv/orders/../x.db"]
)
def test_database_outside_its_volume_is_refused(tmp_path: Path, path: str) -> None:
    text = GUEST.replace('path = "/srv/orders/orders.db"', f'path = "{path}"')
    error = config_error(load_guest, write(tmp_path, "guest.toml", text))
    assert (
        f"databases.orders.path: {path} is not inside volume 'orders' (/srv/orders)"
        in error.message
    )


def test_database_inside_its_volume_is_accepted(tmp_path: Path) -> None:
    text = GUEST.replace('path = "/srv/orders/orders.db"', 'path = "/srv/orders/db/a/./o.db"')
    assert load_guest(write(tmp_path, "guest.toml", text)).databases["orders"].volume == "orders"


def test_hook_volumes_default_to_every_volume(tmp_path: Path) -> None:
    text = GUEST + '[[hooks]]\nname = "q"\npre = ["/bin/true"]\n'
    assert load_guest(write(tmp_path, "guest.toml", text)).hooks[0].volumes is None


def test_native_hook_specs_carry_the_volumes(tmp_path: Path) -> None:
    from cleancut.guest.hooks.native import native_specs

    text = GUEST + '[[hooks]]\nname = "q"\npre = ["/bin/true"]\nvolumes = ["orders"]\n'
    text += '[[hooks]]\nname = "all"\npre = ["/bin/true"]\n'
    specs = native_specs(load_guest(write(tmp_path, "guest.toml", text)).hooks)
    assert [s.volumes for s in specs] == [("orders",), None]


def test_hook_volumes_must_name_declared_volumes(tmp_path: Path) -> None:
    text = GUEST + '[[hooks]]\nname = "q"\npre = ["/bin/true"]\nvolumes = ["orders", "invoices"]\n'
    error = config_error(load_guest, write(tmp_path, "guest.toml", text))
    assert "hooks.0.volumes (hook q): no volume named 'invoices' (volumes: orders)" in (
        error.message
    )


def test_hook_volumes_may_not_be_empty(tmp_path: Path) -> None:
    text = GUEST + '[[hooks]]\nname = "q"\npre = ["/bin/true"]\nvolumes = []\n'
    error = config_error(load_guest, write(tmp_path, "guest.toml", text))
    assert error.key == "hooks.0.volumes"
    assert "leave volumes out to mean every volume" in error.message


def test_max_freeze_timeout_defaults_to_a_minute_and_is_bounded(tmp_path: Path) -> None:
    assert load_guest(write(tmp_path, "guest.toml", GUEST)).max_freeze_timeout == 60.0
    text = 'max_freeze_timeout = "2m"\n' + GUEST
    assert load_guest(write(tmp_path, "guest.toml", text)).max_freeze_timeout == 120.0
    for bad, says in (('"11m"', "above 10m"), ('"0s"', "greater than zero")):
        text = f"max_freeze_timeout = {bad}\n" + GUEST
        error = config_error(load_guest, write(tmp_path, "guest.toml", text))
        assert error.key == "max_freeze_timeout"
        assert says in error.message


def test_relative_paths_in_the_guest_file_are_refused(tmp_path: Path) -> None:
    text = GUEST.replace('path = "/srv/orders"', 'path = "srv/orders"')
    error = config_error(load_guest, write(tmp_path, "guest.toml", text))
    assert error.key == "volumes.orders.path"
    assert "not an absolute path" in error.message


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('staging = "staging"', "staging"),
        ('[hooks_import]\ngcp = "etc/google"', "hooks_import.gcp"),
    ],
)
def test_other_relative_guest_paths_are_refused(tmp_path: Path, line: str, key: str) -> None:
    # the agent runs in the coordinator's working directory: a relative path would move with it
    text = (line + "\n" + GUEST) if key == "staging" else (GUEST + line + "\n")
    error = config_error(load_guest, write(tmp_path, "guest.toml", text))
    assert error.key == key
    assert "is not an absolute path" in error.message


def test_hook_program_must_be_absolute(tmp_path: Path) -> None:
    text = GUEST + '[[hooks]]\nname = "q"\npre = ["pre.sh"]\n'
    error = config_error(load_guest, write(tmp_path, "guest.toml", text))
    assert error.key == "hooks.0.pre"
    assert "must be an absolute path" in error.message


def test_image_only_with_image_snapshot(tmp_path: Path) -> None:
    text = GUEST.replace("freeze = false", 'image = "/datastore/x.img"')
    error = config_error(load_guest, write(tmp_path, "guest.toml", text))
    assert '"image" is only valid with snapshot = "image"' in error.message


# -- files and paths ---------------------------------------------------------------------


def test_relative_paths_are_taken_from_the_app_files_folder(tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    text = (
        'name = "shop"\ncatalog = "state/shop.sqlite"\n[repository]\nurl = "/r"\n'
        'password_file = "shop.pass"\n[hosts.app1]\nguest_config = "guests/app1.toml"\n'
        '[hosts.app2]\nguest_config = "/abs/guest.toml"\n'
    )
    app = write(folder, "shop.toml", text)
    loaded = load_app(app)
    assert loaded.path == app
    assert loaded.config.hosts["app1"].guest_config == folder / "guests" / "app1.toml"
    assert loaded.config.hosts["app2"].guest_config == Path("/abs/guest.toml")
    assert loaded.config.repository.password_file == folder / "shop.pass"
    assert loaded.config.catalog == folder / "state" / "shop.sqlite"


def test_relative_app_path_is_resolved_against_its_folder_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    write(folder, "shop.toml", APP.replace("/etc/cleancut/guest.toml", "guest.toml"))
    monkeypatch.chdir(tmp_path)
    loaded = load_app(Path("etc/shop.toml"))
    assert loaded.config.hosts["app1"].guest_config == folder / "guest.toml"


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    app = write(tmp_path, "app.toml", 'name = "shop"\nfreeze_timeout = \n')
    error = config_error(load_app, app)
    assert "not valid TOML" in error.message
    assert "line 2" in error.message


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    error = config_error(load_app, tmp_path / "nope.toml")
    assert "no such file" in error.message


def test_defaults_are_filled_in(tmp_path: Path) -> None:
    config = load_app(write(tmp_path, "app.toml", APP)).config
    assert config.on_failure == "abort"
    assert config.freeze_timeout == 10.0
    assert config.hosts["app1"].connect == "local"
    guest = load_guest(write(tmp_path, "guest.toml", GUEST))
    assert guest.staging == Path("/var/lib/cleancut/staging")
    assert guest.allow_root_freeze is False


# -- samples -----------------------------------------------------------------------------


def test_app_sample_loads_unchanged(tmp_path: Path) -> None:
    loaded = load_app(write(tmp_path, "shop.toml", APP_SAMPLE))
    assert isinstance(loaded.config, AppConfig)
    assert loaded.config.name == "shop"
    assert loaded.config.freeze_timeout == 10.0
    assert loaded.config.hosts["app1"].guest_config == Path("/etc/cleancut/guest.toml")


def test_app_sample_with_its_operations_tables_enabled_still_loads(tmp_path: Path) -> None:
    start = APP_SAMPLE.index("# [schedule]")
    enabled = APP_SAMPLE[:start] + "".join(
        line[2:] + "\n" if line.startswith("# ") and ("=" in line or line.startswith("# [")) else ""
        for line in APP_SAMPLE[start:].splitlines()
    )
    loaded = load_app(write(tmp_path, "shop.toml", enabled))
    config = loaded.config
    assert config.schedule is not None and config.schedule.actions() == {
        "backup": "*-*-* 02:00",
        "forget": "daily",
        "check": "weekly",
        "verify": "monthly",
    }
    assert config.retention is not None and config.retention.keep_only == "application"
    assert config.monitoring is not None and config.monitoring.on == ["failure", "degraded"]


def test_guest_sample_loads_unchanged(tmp_path: Path) -> None:
    guest = load_guest(write(tmp_path, "guest.toml", GUEST_SAMPLE))
    assert isinstance(guest, GuestConfig)
    assert guest.volumes["orders"].snapshot == "image"
    assert guest.volumes["orders"].frozen
    assert guest.databases["orders"].volume == "orders"


def test_guest_sample_with_its_commented_parts_enabled_still_loads(tmp_path: Path) -> None:
    # The commented-out hook and hooks_import must be valid once uncommented.
    lines = []
    for line in GUEST_SAMPLE.splitlines():
        if (
            line.startswith("# [")
            or line.startswith("# name")
            or any(
                line.startswith(f"# {k}")
                for k in (
                    "pre ",
                    "post ",
                    "timeout",
                    "retries",
                    "continue_on",
                    "azure",
                    "gcp",
                    "qemu_ga",
                    "image ",
                    "allow_root",
                    "sha256",
                    "volumes",
                    "max_freeze",
                    "kind",
                    "dsn",
                    "volume ",
                    "lock_timeout",
                    "socket",
                    "user",
                    "password_file",
                )
            )
        ):
            line = line[2:]
        lines.append(line)
    text = "\n".join(lines).replace("<64 hex digits>", "0" * 64)
    guest = load_guest(write(tmp_path, "guest.toml", text))
    assert guest.hooks[0].name == "app-quiesce"
    assert guest.hooks[0].pre == ["/etc/cleancut/hooks/pre.sh", "--flush"]
    assert guest.hooks_import.qemu_ga == Path("/etc/qemu/fsfreeze-hook.d")
    assert guest.volumes["orders"].image == Path("/datastore/orders.img")
    assert guest.hooks[0].sha256 is not None
    assert guest.hooks[0].sha256.pre == "0" * 64
    assert guest.hooks[0].volumes == ["orders"]
    assert guest.max_freeze_timeout == 60.0
    assert guest.databases["shop"].kind == "postgresql"
    assert guest.databases["invoices"].kind == "mariadb"
