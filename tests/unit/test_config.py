"""The config loader: the shipped file, ``${ENV}`` substitution, overrides, located errors."""

from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broadcaster.config import ConfigError, Settings, load_settings, loader, locate_config
from broadcaster.config.durations import format_duration, parse_duration
from channels.console import ConsoleSettings
from channels.email import EmailSettings

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "config.yaml"


def write_config(folder: Path, text: str, name: str = "config.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def at(path: Path, needle: str, occurrence: int = 1) -> str:
    """``file:line:col`` of the ``occurrence``-th line containing ``needle`` (1-based, like
    the loader), with the column of the needle itself."""
    seen = 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        column = line.find(needle)
        if column >= 0:
            seen += 1
            if seen == occurrence:
                return f"{path}:{number}:{column + 1}"
    raise AssertionError(f"{needle!r} not in {path}")


def problems_of(path: Path | None, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ or {})
    assert info.value.problems, "a ConfigError must list its problems"
    for problem in info.value.problems:
        assert problem in str(info.value)
    return info.value.problems


# -- the shipped file --------------------------------------------------------------------------


def test_shipped_config_loads() -> None:
    settings = load_settings(SHIPPED, {})

    assert isinstance(settings, Settings)
    assert settings.database.url == f"sqlite+aiosqlite:///{REPO / 'data' / 'broadcaster.db'}"
    assert settings.schedule.sweep_interval == timedelta(milliseconds=250)
    assert settings.schedule.cadence.critical == timedelta(minutes=15)
    assert settings.schedule.cadence.for_severity("minor") == timedelta(hours=2)
    assert settings.delivery.channels == ["email"]
    assert settings.delivery.backoff.maximum == timedelta(minutes=10)
    # The embedded default prints: every channel the example rules name is a local sink.
    for name in ("email", "sms", "push"):
        assert isinstance(settings.channels[name], ConsoleSettings)
    assert settings.rules.path == REPO / "rules" / "examples" / "default.yaml"
    assert set(settings.staff.groups) == {"account-managers", "care", "duty-managers"}
    email = settings.channels["smtp"]
    assert isinstance(email, EmailSettings)
    assert email.port == 1025
    assert email.security == "none"
    assert email.sender == "Example Transit <service@example.org>"
    # ${SMTP_USERNAME:-} with the variable unset: the (empty) default.
    assert email.username == ""
    assert email.password is not None
    assert email.password.get_secret_value() == ""
    assert settings.messages.organisation == "Example Transit"
    assert settings.log.level == "INFO"


def test_shipped_config_takes_smtp_secrets_from_the_environment() -> None:
    settings = load_settings(SHIPPED, {"SMTP_USERNAME": "relay-user", "SMTP_PASSWORD": "s3cret"})
    email = settings.channels["smtp"]
    assert isinstance(email, EmailSettings)
    assert email.username == "relay-user"
    assert email.password is not None
    assert email.password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)


def test_an_empty_file_is_refused_and_braces_give_the_defaults(tmp_path: Path) -> None:
    """Read as every default, an emptied file started a daemon on a new, empty store, as if
    the data were lost; ``{}`` says the defaults are meant."""
    empty = write_config(tmp_path / "empty", "# nothing configured\n")
    assert problems_of(empty) == [
        f"{empty}: the file is empty; write {{}} in it to take every default"
    ]
    path = write_config(tmp_path, "{}  # every default\n")
    settings = load_settings(path, {})
    assert settings.schedule == Settings().schedule
    assert settings.delivery.channels == ["console"]
    assert settings.database.url == f"sqlite+aiosqlite:///{tmp_path / 'data' / 'broadcaster.db'}"


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("mysql://app:pw@db/x", "'mysql://app:***@db/x': the driver 'mysql' is not one of ours"),
        ("sqlite:///x.db", "'sqlite:///x.db': the driver 'sqlite' is not one of ours"),
        ("not a url", "not a database URL"),
    ],
)
def test_a_database_url_of_another_driver_is_a_located_error(
    tmp_path: Path, url: str, said: str
) -> None:
    """It failed at start with a traceback from deep in SQLAlchemy, naming no file or key;
    a password in it is not repeated."""
    path = write_config(tmp_path, f"database:\n  url: '{url}'\n")
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}:2:") and f": database.url: {said}" in problem
    assert "sqlite+aiosqlite:///" in problem and "pw" not in problem


# -- ${VAR} substitution -----------------------------------------------------------------------


SUBSTITUTED = """
    channels:
      console:
        type: console
      email:
        type: email
        host: ${SMTP_HOST}
        port: ${SMTP_PORT:-2525}
        username: ${SMTP_USERNAME:-postmaster}
        password: ${SMTP_PASSWORD:-}
        from: "${SENDER_NAME:-Example} <${SENDER_ADDR:-service@example.org}>"
    """


def test_placeholders_take_values_and_defaults(tmp_path: Path) -> None:
    path = write_config(tmp_path, SUBSTITUTED)
    settings = load_settings(path, {"SMTP_HOST": "smtp.example.org", "SENDER_NAME": "Care"})
    email = settings.channels["email"]
    assert isinstance(email, EmailSettings)
    assert email.host == "smtp.example.org"
    assert email.port == 2525  # the default, then validated as an int
    assert email.username == "postmaster"
    assert email.password is not None
    assert email.password.get_secret_value() == ""
    assert email.sender == "Care <service@example.org>"  # two placeholders in one value


def test_set_variables_win_over_defaults(tmp_path: Path) -> None:
    path = write_config(tmp_path, SUBSTITUTED)
    env = {
        "SMTP_HOST": "relay",
        "SMTP_PORT": "587",
        "SMTP_USERNAME": "me",
        "SMTP_PASSWORD": "pw",
    }
    email = load_settings(path, env).channels["email"]
    assert isinstance(email, EmailSettings)
    assert (email.host, email.port, email.username) == ("relay", 587, "me")
    assert email.password is not None
    assert email.password.get_secret_value() == "pw"


def test_an_empty_variable_takes_the_default_like_the_shell(tmp_path: Path) -> None:
    path = write_config(tmp_path, SUBSTITUTED)
    email = load_settings(path, {"SMTP_HOST": "", "SMTP_PORT": ""}).channels["email"]
    assert isinstance(email, EmailSettings)
    assert email.host == ""  # ${VAR} without a default: set (empty) is still set
    assert email.port == 2525


def test_a_missing_variable_is_an_error_naming_file_line_and_key(tmp_path: Path) -> None:
    path = write_config(tmp_path, SUBSTITUTED)
    problems = problems_of(path, {})
    assert problems == [
        f"{at(path, '${SMTP_HOST}')}: channels.email.host: "
        "environment variable SMTP_HOST is not set"
    ]


def test_every_missing_variable_is_reported(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
        database:
          url: ${DATABASE_URL}
        messages:
          public_url: https://${PUBLIC_HOST}/status
        """,
    )
    assert problems_of(path, {}) == [
        f"{at(path, '${DATABASE_URL}')}: database.url: "
        "environment variable DATABASE_URL is not set",
        f"{at(path, 'https://')}: messages.public_url: environment variable PUBLIC_HOST is not set",
    ]


# -- BROADCASTER_SECTION__KEY overrides --------------------------------------------------------


def test_env_override_sets_a_nested_key() -> None:
    settings = load_settings(SHIPPED, {"BROADCASTER_SCHEDULE__CADENCE__CRITICAL": "5m"})
    assert settings.schedule.cadence.critical == timedelta(minutes=5)
    assert settings.schedule.cadence.major == timedelta(minutes=30)  # untouched siblings


def test_env_override_values_are_yaml_typed() -> None:
    settings = load_settings(
        SHIPPED,
        {
            "BROADCASTER_DELIVERY__WORKERS": "8",
            "BROADCASTER_DELIVERY__CHANNELS": "[email, smtp]",
            "BROADCASTER_DELIVERY__BACKOFF": "{initial: 1s, multiplier: 3}",
            "BROADCASTER_DATABASE__ECHO": "true",
            "BROADCASTER_LOG__LEVEL": "DEBUG",
            "BROADCASTER_CHANNELS__SMTP__PORT": "2525",
        },
    )
    assert settings.delivery.workers == 8
    assert settings.delivery.channels == ["email", "smtp"]
    assert settings.delivery.backoff.initial == timedelta(seconds=1)
    assert settings.delivery.backoff.multiplier == 3.0
    assert settings.database.echo is True
    assert settings.log.level == "DEBUG"
    email = settings.channels["smtp"]
    assert isinstance(email, EmailSettings)
    assert email.port == 2525
    assert email.host == "127.0.0.1"  # the rest of the channel comes from the file


def test_env_override_creates_sections_missing_from_the_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, "log:\n  level: INFO\n")
    settings = load_settings(path, {"BROADCASTER_SCHEDULE__CADENCE__MAJOR": "1h"})
    assert settings.schedule.cadence.major == timedelta(hours=1)


def test_env_override_beats_a_substituted_value(tmp_path: Path) -> None:
    path = write_config(tmp_path, SUBSTITUTED)
    env = {"SMTP_HOST": "from-placeholder", "BROADCASTER_CHANNELS__EMAIL__HOST": "from-override"}
    email = load_settings(path, env).channels["email"]
    assert isinstance(email, EmailSettings)
    assert email.host == "from-override"


@pytest.mark.parametrize(
    "name",
    [
        "BROADCASTER_CONFIG",
        "BROADCASTER_TEST_POSTGRES_URL",
        "BROADCASTER_SOMETHING_ELSE",
        "BROADCASTER__X",
        "SCHEDULE__CADENCE__CRITICAL",
        "OTHER_SCHEDULE__CADENCE__CRITICAL",
    ],
)
def test_variables_without_section_separator_are_not_overrides(name: str) -> None:
    baseline = load_settings(SHIPPED, {})
    environ = {name: "not: [valid, {settings"}
    if name == "BROADCASTER_CONFIG":
        environ[name] = str(SHIPPED)
    assert load_settings(SHIPPED, environ) == baseline


def test_error_in_an_env_override_names_the_variable() -> None:
    problems = problems_of(SHIPPED, {"BROADCASTER_DELIVERY__WORKERS": "many"})
    assert len(problems) == 1
    assert problems[0].startswith("environment BROADCASTER_DELIVERY__WORKERS: delivery.workers: ")
    assert "valid integer" in problems[0]


def test_bad_duration_in_an_env_override_names_the_variable() -> None:
    problems = problems_of(SHIPPED, {"BROADCASTER_SCHEDULE__CADENCE__CRITICAL": "soon"})
    assert len(problems) == 1
    assert problems[0].startswith(
        "environment BROADCASTER_SCHEDULE__CADENCE__CRITICAL: schedule.cadence.critical: "
    )
    assert "invalid duration 'soon'" in problems[0]


def test_unknown_key_from_an_env_override_names_the_variable() -> None:
    problems = problems_of(SHIPPED, {"BROADCASTER_SCHEDULE__CADENSE": "5m"})
    assert problems == [
        "environment BROADCASTER_SCHEDULE__CADENSE: schedule.cadense: "
        "Extra inputs are not permitted"
    ]


def test_list_replaced_from_env_is_blamed_on_the_variable_not_the_file(tmp_path: Path) -> None:
    # The file's list had an item 1 too; its line must not be reported for the new item 1.
    path = write_config(tmp_path, "delivery:\n  channels:\n    - console\n    - console\n")
    problems = problems_of(path, {"BROADCASTER_DELIVERY__CHANNELS": "[console, pager]"})
    assert problems == [
        "environment BROADCASTER_DELIVERY__CHANNELS: delivery.channels.1: "
        "unknown channel 'pager' (defined: console)"
    ]


def test_override_with_empty_key_segment_is_an_error() -> None:
    problems = problems_of(SHIPPED, {"BROADCASTER_SCHEDULE____CRITICAL": "5m"})
    assert problems == [
        "environment BROADCASTER_SCHEDULE____CRITICAL: empty key segment in the name"
    ]


def test_override_that_is_not_yaml_is_an_error() -> None:
    problems = problems_of(SHIPPED, {"BROADCASTER_DELIVERY__CHANNELS": "[console"})
    assert len(problems) == 1
    assert problems[0].startswith(
        "environment BROADCASTER_DELIVERY__CHANNELS: not a valid YAML value"
    )


# -- locate_config -----------------------------------------------------------------------------


def test_locate_prefers_the_explicit_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_config(tmp_path, "{}\n")
    explicit = tmp_path / "explicit.yaml"
    assert locate_config(explicit, {"BROADCASTER_CONFIG": "from-env.yaml"}) == explicit
    assert locate_config(str(explicit), {}) == explicit


def test_locate_then_uses_broadcaster_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_config(tmp_path, "{}\n")
    assert locate_config(None, {"BROADCASTER_CONFIG": "/etc/bc.yaml"}) == Path("/etc/bc.yaml")
    monkeypatch.setenv("BROADCASTER_CONFIG", "/etc/from-process.yaml")
    assert locate_config() == Path("/etc/from-process.yaml")


def test_locate_then_uses_the_local_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BROADCASTER_CONFIG", raising=False)
    write_config(tmp_path, "{}\n")
    assert locate_config(None, {}) == Path("config.yaml")
    assert locate_config(None, {"BROADCASTER_CONFIG": ""}) == Path("config.yaml")
    assert locate_config() == Path("config.yaml")


def test_locate_falls_back_to_the_shipped_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no config.yaml here
    found = locate_config(None, {})
    assert found.is_absolute()
    assert found.exists()
    assert found.name in {"config.yaml", "_default_config.yaml"}
    assert load_settings(None, {}).delivery.channels == ["email"]


def test_the_installed_copy_reads_its_rules_from_the_installation_and_stores_data_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wheel keeps config.yaml as broadcaster/_default_config.yaml and the example rules
    in rules/examples/ beside it: its rules path must find them there, and its SQLite store
    go to ./data of the working directory, not into the installation."""
    site = tmp_path / "site-packages"
    (site / "broadcaster").mkdir(parents=True)
    (site / "rules" / "examples").mkdir(parents=True)
    shipped = site / "broadcaster" / "_default_config.yaml"
    shipped.write_text((REPO / "config.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    example = site / "rules" / "examples" / "default.yaml"
    example.write_text((REPO / "rules" / "examples" / "default.yaml").read_text("utf-8"))
    monkeypatch.setattr(loader, "SHIPPED_CONFIG", shipped)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    settings = load_settings(None, {})
    assert settings.rules.path == example
    assert settings.database.url == f"sqlite+aiosqlite:///{work / 'data' / 'broadcaster.db'}"
    # Any other file keeps its paths relative to itself.
    other = tmp_path / "elsewhere" / "config.yaml"
    other.parent.mkdir()
    other.write_text(shipped.read_text(encoding="utf-8"), encoding="utf-8")
    settings = load_settings(other, {})
    assert settings.rules.path == other.parent / "rules" / "examples" / "default.yaml"
    assert settings.database.url.endswith(f"{other.parent / 'data' / 'broadcaster.db'}")


def test_load_settings_uses_broadcaster_config_from_its_environ(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_config(tmp_path, "delivery:\n  workers: 2\n")  # ./config.yaml, not chosen
    chosen = write_config(tmp_path / "etc", "delivery:\n  workers: 7\n")
    assert load_settings(None, {"BROADCASTER_CONFIG": str(chosen)}).delivery.workers == 7
    assert load_settings(None, {}).delivery.workers == 2


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "absent.yaml"
    problems = problems_of(missing)
    assert len(problems) == 1
    assert problems[0].startswith(f"{missing}: cannot read")


# -- located validation errors -----------------------------------------------------------------


def test_unknown_key_points_at_the_key(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
        schedule:
          cadence:
            critical: 5m
          bogus:
            nested: 1
        """,
    )
    assert problems_of(path) == [
        f"{at(path, 'bogus')}: schedule.bogus: Extra inputs are not permitted"
    ]


def test_unknown_section_points_at_the_section(tmp_path: Path) -> None:
    path = write_config(tmp_path, "log:\n  level: INFO\nlogging:\n  level: INFO\n")
    assert problems_of(path) == [f"{path}:3:1: logging: Extra inputs are not permitted"]


def test_wrong_type_points_at_the_value(tmp_path: Path) -> None:
    path = write_config(tmp_path, "delivery:\n  workers: many\n  batch_size: 10\n")
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:2:12: delivery.workers: ")
    assert "valid integer" in problem


def test_out_of_range_value_points_at_the_value(tmp_path: Path) -> None:
    path = write_config(tmp_path, "delivery:\n  batch_size: 10\n  workers: 0\n")
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:3:12: delivery.workers: ")
    assert "greater than or equal to 1" in problem


def test_bad_duration_points_at_the_value(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
        schedule:
          cadence:
            critical: 15m
            major: soon
        """,
    )
    (problem,) = problems_of(path)
    assert problem.startswith(f"{at(path, 'soon')}: schedule.cadence.major: ")
    assert "invalid duration 'soon'" in problem


def test_too_long_duration_is_a_located_error(tmp_path: Path) -> None:
    path = write_config(tmp_path, "schedule:\n  round_lease: 99999999999d\n")
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:2:16: schedule.round_lease: ")
    assert "too long" in problem


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
        delivery:
          workers: many
          lease: later
        log:
          level: LOUD
        """,
    )
    problems = problems_of(path)
    assert [p.split(": ", 2)[:2] for p in problems] == [
        [at(path, "many"), "delivery.workers"],
        [at(path, "later"), "delivery.lease"],
        [at(path, "LOUD"), "log.level"],
    ]


def test_unknown_channel_points_at_the_list_item(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
        delivery:
          channels:
            - console
            - sms
          workers: 2
        """,
    )
    assert problems_of(path) == [
        f"{at(path, 'sms')}: delivery.channels.1: unknown channel 'sms' (defined: console)"
    ]


def test_a_pooler_without_a_direct_url_points_at_the_pooler(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
        database:
          url: postgresql+asyncpg://app@pooler:6432/broadcaster
          pooler: transaction
        """,
    )
    [problem] = problems_of(path)
    assert problem.startswith(f"{at(path, 'transaction')}: database.pooler: pooler 'transaction'")
    assert "needs database.direct_url" in problem


def test_a_pooler_is_postgresql_s_and_its_direct_url_is_not_the_pooler(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
        database:
          url: sqlite+aiosqlite:///store.db
          pooler: session
          direct_url: sqlite+aiosqlite:///store.db
        """,
    )
    assert problems_of(path) == [
        f"{at(path, 'session')}: database.pooler: pooler 'session' is for PostgreSQL: "
        "database.url must be a postgresql+asyncpg://… URL (the pooler's address)",
        f"{at(path, 'sqlite', 2)}: database.direct_url: must be a postgresql+asyncpg://… URL "
        "(PostgreSQL)",
    ]
    path = write_config(
        tmp_path,
        """
        database:
          url: postgresql+asyncpg://app@db:5432/broadcaster
          pooler: session
          direct_url: postgresql+asyncpg://app@db:5432/broadcaster
        """,
    )
    assert problems_of(path) == [
        f"{at(path, 'postgresql', 2)}: database.direct_url: is the same as database.url: give "
        "the PostgreSQL server's own address, not the pooler's"
    ]


def test_a_pooler_with_its_direct_url_loads(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
        database:
          url: postgresql+asyncpg://app@pooler:6432/broadcaster
          pooler: transaction
          direct_url: postgresql+asyncpg://app@db:5432/broadcaster
        """,
    )
    database = load_settings(path, {}).database
    assert (database.pooler, database.direct) == (
        "transaction",
        "postgresql+asyncpg://app@db:5432/broadcaster",
    )
    assert load_settings(SHIPPED, {}).database.pooler == "none"


def test_unknown_channel_in_a_flow_list_points_at_the_item(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
        channels:
          console: {type: console}
          mail: {type: email}
        delivery:
          channels: [console, pager, mail]
        """,
    )
    assert problems_of(path) == [
        f"{at(path, 'pager')}: delivery.channels.1: unknown channel 'pager' "
        "(defined: console, mail)"
    ]


def test_bad_channel_type_points_at_the_type(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
        channels:
          console:
            type: console
          pager:
            type: carrier-pigeon
        """,
    )
    (problem,) = problems_of(path)
    assert problem.startswith(f"{at(path, 'carrier-pigeon')}: channels.pager.type: ")
    assert "carrier-pigeon" in problem
    assert "'console', 'email'" in problem


def test_channel_without_type_points_at_the_channel(tmp_path: Path) -> None:
    path = write_config(tmp_path, "channels:\n  console:\n    contact: email\n")
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:2:3: channels.console: ")
    assert "discriminator 'type'" in problem


def test_bad_channel_setting_is_named_without_the_union_tag(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
        channels:
          console:
            type: console
            colour: green
          email:
            type: email
            host: smtp.example.org
            port: twenty-five
        """,
    )
    problems = problems_of(path)
    assert len(problems) == 2
    # A scalar's location is its value, on the key's line.
    assert problems[0] == f"{at(path, 'green')}: channels.console.colour: " + (
        "Extra inputs are not permitted"
    )
    assert problems[1].startswith(f"{at(path, 'twenty-five')}: channels.email.port: ")


def test_yaml_syntax_error_names_its_line(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
        delivery:
          workers: 4
           lease: 60s
        log:
          level: INFO
        """,
    )
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:3:")
    assert "YAML syntax error: mapping values are not allowed here" in problem


def test_unclosed_flow_list_is_a_yaml_syntax_error(tmp_path: Path) -> None:
    path = write_config(tmp_path, "delivery:\n  channels: [console\nlog:\n  level: INFO\n")
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:3:")
    assert "YAML syntax error" in problem


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    path = write_config(tmp_path, text)
    assert problems_of(path) == [f"{path}:1:1: the top level must be a mapping of sections"]


# -- database URL ------------------------------------------------------------------------------


def test_relative_sqlite_url_is_resolved_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "etc" / "broadcaster"
    path = write_config(folder, "database:\n  url: sqlite+aiosqlite:///state/bc.db\n")
    monkeypatch.chdir(tmp_path)
    settings = load_settings(Path("etc/broadcaster/config.yaml"), {})
    assert settings.database.url == f"sqlite+aiosqlite:///{folder / 'state' / 'bc.db'}"
    assert load_settings(path, {}).database.url == settings.database.url


@pytest.mark.parametrize(
    "url",
    [
        "sqlite+aiosqlite:////var/lib/broadcaster/bc.db",
        "sqlite+aiosqlite:///:memory:",
        "postgresql+asyncpg://bc@db.example.org/bc",
    ],
)
def test_other_database_urls_are_kept(tmp_path: Path, url: str) -> None:
    path = write_config(tmp_path, f"database:\n  url: '{url}'\n")
    assert load_settings(path, {}).database.url == url


def test_relative_sqlite_url_from_env_is_resolved_against_the_config_folder(
    tmp_path: Path,
) -> None:
    path = write_config(tmp_path / "conf", "{}\n")
    settings = load_settings(path, {"BROADCASTER_DATABASE__URL": "sqlite+aiosqlite:///x.db"})
    assert settings.database.url == f"sqlite+aiosqlite:///{tmp_path / 'conf' / 'x.db'}"


# -- durations ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("2h", timedelta(hours=2)),
        ("1d", timedelta(days=1)),
        ("1h30m", timedelta(minutes=90)),
        ("500ms", timedelta(milliseconds=500)),
        ("1.5s", timedelta(milliseconds=1500)),
        (" 1h 30m ", timedelta(minutes=90)),
        (90, timedelta(seconds=90)),
        (0.25, timedelta(milliseconds=250)),
        (timedelta(minutes=3), timedelta(minutes=3)),
    ],
)
def test_parse_duration(text: object, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text", ["", "soon", "5x", "m5", "-5s", "1h-5m", -1, True, None, [1], "9" * 400 + "s"]
)
def test_parse_duration_rejects(text: object) -> None:
    with pytest.raises(ValueError, match=r"duration|true/false"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(0), "0s"),
        (timedelta(seconds=90), "1m30s"),
        (timedelta(hours=1, minutes=30), "1h30m"),
        (timedelta(days=2, seconds=5), "2d5s"),
        (timedelta(milliseconds=500), "500ms"),
        (timedelta(milliseconds=1500), "1s500ms"),
        (timedelta(microseconds=1), "0.001ms"),
    ],
)
def test_format_duration(value: timedelta, text: str) -> None:
    assert format_duration(value) == text


def test_durations_serialise_in_their_spelling() -> None:
    dumped = load_settings(SHIPPED, {}).model_dump(mode="json")
    assert dumped["schedule"]["cadence"] == {"critical": "15m", "major": "30m", "minor": "2h"}
    assert dumped["delivery"]["poll_interval"] == "500ms"


MAX_WHOLE_SECONDS = timedelta.max // timedelta(seconds=1)


@given(st.integers(min_value=0, max_value=MAX_WHOLE_SECONDS))
def test_format_then_parse_round_trips_whole_seconds(seconds: int) -> None:
    value = timedelta(seconds=seconds)
    assert parse_duration(format_duration(value)) == value


@given(st.timedeltas(min_value=timedelta(0)))
def test_format_then_parse_round_trips_to_the_microsecond(value: timedelta) -> None:
    assert parse_duration(format_duration(value)) == value


def _spell(part: tuple[int | float, str]) -> str:
    return f"{part[0]}{part[1]}"


DURATION_LIKE = st.from_regex(r"\A\s?(\d{1,25}(\.\d{0,8})?\s?(ms|s|m|h|d|x)?){0,4}\s?\Z")
"""Digits (any script) and units, loosely: mostly near-misses of the grammar."""
NUMBERS_WITH_UNITS = st.lists(
    st.tuples(
        st.one_of(
            st.integers(min_value=0),
            st.floats(min_value=0, allow_nan=False, allow_infinity=False),
        ),
        st.sampled_from(["ms", "s", "m", "h", "d", "", "x"]),
    ).map(_spell),
    max_size=4,
).map("".join)
"""Well-formed parts with numbers of any size: overflow beyond ``timedelta.max``."""


@given(st.one_of(st.text(), DURATION_LIKE, NUMBERS_WITH_UNITS))
def test_parse_duration_raises_only_value_error(text: str) -> None:
    try:
        value = parse_duration(text)
    except ValueError:
        return
    assert value >= timedelta(0)


@given(st.one_of(st.integers(), st.floats(), st.none(), st.booleans(), st.lists(st.integers())))
def test_parse_duration_of_non_text_raises_only_value_error(value: object) -> None:
    try:
        result = parse_duration(value)
    except ValueError:
        return
    assert result >= timedelta(0)


def test_a_staff_id_longer_than_the_store_keeps_points_at_the_person(tmp_path: Path) -> None:
    long_id = "duty-manager-" + "x" * 52  # 65 characters
    path = write_config(
        tmp_path,
        f"""
        staff:
          people:
            ann: {{name: Ann Visser}}
            {long_id}: {{name: Maria Jansen}}
        """,
    )
    problems = problems_of(path)
    assert len(problems) == 1
    assert problems[0].startswith(f"{at(path, long_id)}: staff.people.{long_id}: staff id ")
    assert "65 characters long; at most 64" in problems[0]


def test_a_lease_under_a_second_and_a_zero_interval_are_refused_where_written(
    tmp_path: Path,
) -> None:
    path = write_config(
        tmp_path,
        """
        delivery:
          lease: 0s
        schedule:
          round_lease: 500ms
          cadence:
            critical: 0m
        rules:
          followup_sweep: 0s
        """,
    )
    problems = {p.split(": ", 1)[1].split(": ", 1)[0]: p for p in problems_of(path)}
    assert sorted(problems) == [
        "delivery.lease",
        "rules.followup_sweep",
        "schedule.cadence.critical",
        "schedule.round_lease",
    ]
    assert problems["delivery.lease"].startswith(f"{at(path, '0s', 1)}: delivery.lease: ")
    assert problems["schedule.round_lease"].startswith(f"{at(path, '500ms')}: ")
    assert problems["schedule.cadence.critical"].startswith(f"{path}:6:")  # critical: 0m
    assert problems["rules.followup_sweep"].startswith(f"{at(path, '0s', 2)}: ")
    assert "must be at least 1s" in problems["delivery.lease"]
    assert "must be more than 0s" in problems["schedule.cadence.critical"]


def test_a_config_file_that_is_not_utf8_is_named_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"delivery:\n  workers: 2\nmessages:\n  organisation: Caf\xe9 Transit\n")
    assert problems_of(path) == [f"{path}:4: not UTF-8 (byte 0xe9 at offset 52); save it as UTF-8"]


FEEDS = """
feeds:
  - name: status
    kind: statuspage
    url: https://status.example.com/api/v2/incidents.json
"""


def test_an_env_override_can_reach_into_a_list_item_and_is_blamed_for_it(
    tmp_path: Path,
) -> None:
    path = write_config(tmp_path, FEEDS)
    moved = load_settings(path, {"BROADCASTER_FEEDS__0__URL": "https://other.example/x.json"})
    assert [feed.url for feed in moved.feeds] == ["https://other.example/x.json"]
    assert moved.feeds[0].name == "status"  # the rest of the item is the file's
    assert problems_of(path, {"BROADCASTER_FEEDS__0__URL": "ftp://x"}) == [
        "environment BROADCASTER_FEEDS__0__URL: feeds.0.url: a feed URL must be http:// or https://"
    ]
    assert problems_of(path, {"BROADCASTER_FEEDS__3__URL": "https://x"}) == [
        "environment BROADCASTER_FEEDS__3__URL: feeds is a list of 1 item(s); '3' is not one "
        "of its indexes (0 to 0)"
    ]


def test_a_channel_contact_kind_no_customer_has_is_a_located_error(tmp_path: Path) -> None:
    """``contact: smss`` reached no customer, silently: no contact point has that kind."""
    path = write_config(
        tmp_path,
        """
        channels:
          sms:
            type: console
            contact: smss
        delivery:
          channels: [sms]
        """,
    )
    assert problems_of(path) == [
        f"{at(path, 'smss')}: channels.sms.contact: unknown contact kind 'smss' (one of: "
        "email, sms, webhook, fcm, apns, webpush, ntfy, customer)"
    ]


def test_a_default_language_without_templates_is_a_located_error(tmp_path: Path) -> None:
    """Every message falls back to it: without its templates, staff notices and customers'
    messages in other languages failed at every attempt."""
    path = write_config(tmp_path, "messages:\n  default_language: fr\n")
    assert problems_of(path) == [
        f"{at(path, 'fr')}: messages.default_language: no templates in 'fr' (there are: en, "
        "nl); add a folder fr/ to messages.templates_dir, or pick one of those"
    ]
    (tmp_path / "mine" / "fr").mkdir(parents=True)
    ours = write_config(
        tmp_path, "messages:\n  default_language: fr\n  templates_dir: mine\n", name="ours.yaml"
    )
    assert load_settings(ours, {}).messages.default_language == "fr"


def test_managers_that_go_round_are_a_located_error(tmp_path: Path) -> None:
    """Escalation goes up the managers: round a loop, an overdue task came back to its own
    owner as if to a manager."""
    path = write_config(
        tmp_path,
        """
        staff:
          people:
            ann: {name: Ann, email: ann@example.org, manager: maria}
            maria: {name: Maria, email: maria@example.org, manager: ann}
            bram: {name: Bram, email: bram@example.org, manager: maria}
        """,
    )
    assert problems_of(path) == [
        f"{at(path, 'maria}')}: staff.people.ann.manager: managers go round: ann -> maria -> ann",
        f"{at(path, 'ann}')}: staff.people.maria.manager: managers go round: maria -> ann -> maria",
    ]


def test_a_staff_channel_that_cannot_reach_staff_is_refused(tmp_path: Path) -> None:
    """Staff have an email address and a phone: a push channel got email addresses for
    device tokens, and every notice failed."""
    path = write_config(
        tmp_path,
        """
        delivery:
          channels: [email]
        channels:
          email: {type: console, contact: email}
          push: {type: console, contact: fcm}
        staff:
          notify_channel: push
        """,
    )
    assert problems_of(path) == [
        f"{at(path, 'push', 2)}: staff.notify_channel: channel 'push' reaches fcm "
        "addresses; staff are told by email or SMS: name a channel whose contact is email or sms"
    ]
    assert load_settings(path, {"BROADCASTER_STAFF__NOTIFY_CHANNEL": "email"})


def test_an_index_into_a_list_the_file_lacks_names_the_variable() -> None:
    """It was blamed on the file's first line ("feeds: Input should be a valid list")."""
    assert problems_of(SHIPPED, {"BROADCASTER_FEEDS__0__URL": "http://127.0.0.1/x"}) == [
        "environment BROADCASTER_FEEDS__0__URL: feeds is not a list in the file, so it has no "
        "item 0; write the feeds list in the file"
    ]
    nested = problems_of(SHIPPED, {"BROADCASTER_HTTP__TRUSTED_PROXIES__0": "10.0.0.5"})
    assert nested == [
        "environment BROADCASTER_HTTP__TRUSTED_PROXIES__0: http.trusted_proxies is not a list "
        "in the file, so it has no item 0; set the whole list with "
        "BROADCASTER_HTTP__TRUSTED_PROXIES='[...]' (YAML)"
    ]
