"""The server's settings: sources, checks with the key named, the mapping
onto the library's Settings, --print-config, docs/configuration.md."""

from __future__ import annotations

import tomllib
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner
from hypothesis import given, settings as hsettings, strategies as st

from fleetrpc.cli import main
from fleetrpc.config import ServerSettings, Settings, load_server_settings, render
from fleetrpc.config.describe import describe, markdown
from fleetrpc.config.server import LIBRARY_MAP, LIBRARY_ONLY, SECTIONS, env_name
from fleetrpc.errors import ValidationError

REPO = Path(__file__).resolve().parents[2]


def test_every_library_setting_is_mapped():
    # A field added to the library's Settings must be set from a section
    # (LIBRARY_MAP) or be declared library-only; this fails until it is.
    fields = {f.name for f in msgspec.structs.fields(Settings)}
    assert fields == set(LIBRARY_MAP) | set(LIBRARY_ONLY)
    for section, key in LIBRARY_MAP.values():
        assert key in {f.name for f in msgspec.structs.fields(SECTIONS[section])}


def test_sources_in_order(tmp_path):
    path = tmp_path / "fleetrpc.toml"
    path.write_text('[http]\nport = 9000\nhost = "0.0.0.0"\n[events]\nwebhook_urls = ["http://a"]\n')
    s = load_server_settings(path, env={"FLEETRPC_HTTP_PORT": "9001", "FLEETRPC_EVENTS_WEBHOOK_URLS": "http://b,http://c",
                                        "FLEETRPC_MQTT_URL": "mqtts://broker:8883", "FLEETRPC_MQTT_USERNAME": ""})
    assert (s.http.port, s.http.host) == (9001, "0.0.0.0")
    assert s.events.webhook_urls == ["http://b", "http://c"]
    assert s.mqtt.username is None
    lib = s.library()
    assert (lib.mqtt_url, lib.http_port) == ("mqtts://broker:8883", 9001)
    s = load_server_settings(path, env={}, overrides={"http": {"port": 0}})
    assert s.http.port == 0


def test_embedded_defaults(tmp_path):
    s = load_server_settings(env={"FLEETRPC_SERVER_DATA_DIR": str(tmp_path)})
    assert s.embedded_broker
    assert s.store_url == f"sqlite:///{tmp_path.resolve()}/fleetrpc.db"


@pytest.mark.parametrize("env, message", [
    ({"FLEETRPC_HTTP_PORT": "x"}, "http.port (from $FLEETRPC_HTTP_PORT): expected `int`"),
    ({"FLEETRPC_HTTP_PORT": "70000"}, "http.port (from $FLEETRPC_HTTP_PORT): expected `int` <= 65535"),
    ({"FLEETRPC_MQTT_QOS": "2"}, "mqtt.qos (from $FLEETRPC_MQTT_QOS)"),
    ({"FLEETRPC_JWT_SECRET": "short"}, "jwt.secret must be at least 64 characters"),
    ({"FLEETRPC_JWT_ACCESS_TTL_S": "700000"}, "jwt.access_ttl_s must be shorter than jwt.refresh_ttl_s"),
    ({"FLEETRPC_HTTP_TLS_CERT": "/nonexistent.pem"}, "http.tls_cert and http.tls_key go together"),
    ({"FLEETRPC_AUTH_SYSADMIN_EMAIL": "a@b"}, "auth.sysadmin_email and auth.sysadmin_password (or auth.sysadmin_password_file) go together"),
    ({"FLEETRPC_AUTH_SYSADMIN_PASSWORD": "p" * 12}, "auth.sysadmin_email and auth.sysadmin_password"),
    ({"FLEETRPC_AUTH_SYSADMIN_EMAIL": "a@b", "FLEETRPC_AUTH_SYSADMIN_PASSWORD": "p" * 12,
      "FLEETRPC_AUTH_SYSADMIN_PASSWORD_FILE": "/etc/hostname"}, "set one, not both"),
    ({"FLEETRPC_AUTH_SYSADMIN_EMAIL": "a@b", "FLEETRPC_AUTH_SYSADMIN_PASSWORD_FILE": "/nonexistent"},
     "auth.sysadmin_password_file: no such file"),
    ({"FLEETRPC_EVENTS_WEBHOOK_URLS": "[1"}, "events.webhook_urls (from $FLEETRPC_EVENTS_WEBHOOK_URLS): not a JSON list"),
])
def test_bad_values_name_the_key(env, message):
    with pytest.raises(ValidationError) as exc:
        load_server_settings(env=env)
    assert message in str(exc.value)


def test_bad_files_name_the_key(tmp_path):
    path = tmp_path / "c.toml"
    for text, message in (
        ("[http]\nprot = 1\n", "unknown setting http.prot (from"),
        ("[htp]\n", "unknown section [htp]"),
        ("[http]\nport = 'x'\n", "http.port (from"),
        ("[http\n", "not valid TOML"),
        ("http = 3\n", "http must be a table"),
    ):
        path.write_text(text)
        with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace("(", r"\(")):
            load_server_settings(path, env={})
    with pytest.raises(ValidationError, match="cannot read"):
        load_server_settings(tmp_path / "missing.toml", env={})


@hsettings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(env_name(s, f.name) for s, c in SECTIONS.items()
                                              for f in msgspec.structs.fields(c))),
                       st.text(max_size=20), max_size=4))
def test_any_environment_gives_settings_or_a_validation_error(env):
    try:
        s = load_server_settings(env=env)
    except ValidationError as exc:
        assert str(exc)
    else:
        assert isinstance(s, ServerSettings)


def test_print_config_is_toml_and_hides_secrets(tmp_path):
    s = load_server_settings(env={"FLEETRPC_JWT_SECRET": "s" * 70, "FLEETRPC_MQTT_PASSWORD": "hunter2"})
    text = render(s)
    assert "hunter2" not in text and "s" * 70 not in text
    parsed = tomllib.loads(text)
    assert set(parsed) == set(SECTIONS)
    for setting in describe(s):
        assert setting.env in text and setting.doc, setting.name
    # saved as a file, it loads back to the same settings (less the secrets)
    path = tmp_path / "printed.toml"
    path.write_text(render(ServerSettings()))
    assert load_server_settings(path, env={}) == load_server_settings(env={})


def test_serve_print_config_and_errors(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["serve", "--print-config"], env={"FLEETRPC_HTTP_PORT": "9123"})
    assert result.exit_code == 0 and "port = 9123" in result.output
    result = runner.invoke(main, ["serve"], env={"FLEETRPC_HTTP_PORT": "nope"})
    assert result.exit_code == 2 and "configuration error: http.port" in result.output


def test_configuration_doc_is_current():
    assert markdown() in (REPO / "docs" / "configuration.md").read_text()


def test_broker_auth_and_client_rpc_sections(tmp_path):
    """[dynsec], [emqx], [client_rpc]: from a file and the environment
    (tables as JSON), checked, and printed back as loadable TOML."""
    path = tmp_path / "fleetrpc.toml"
    path.write_text('[client_rpc]\nhandlers = { getWeather = "pkg.rpc:weather" }\nwebhook_url = "http://h/x"\n'
                    'webhook_methods = ["*"]\n[emqx]\nenabled = true\nsecret = "0123456789abcdef"\n')
    env = {"FLEETRPC_CLIENT_RPC_WEBHOOK_HEADERS": '{"X-Key": "k1"}', "FLEETRPC_DYNSEC_ADMIN_PASSWORD": "adm1n"}
    s = load_server_settings(path, env=env)
    assert s.client_rpc.handlers == {"getWeather": "pkg.rpc:weather"}
    assert s.client_rpc.webhook_takes_every_method and s.client_rpc.webhook_headers == {"X-Key": "k1"}
    assert (s.emqx.enabled, s.dynsec.admin_password, s.dynsec.enabled) == (True, "adm1n", True)
    text = render(s)
    assert "k1" not in text and "adm1n" not in text and "0123456789abcdef" not in text
    assert 'handlers = {"getWeather" = "pkg.rpc:weather"}' in text
    printed = tmp_path / "printed.toml"
    printed.write_text(text)
    again = load_server_settings(printed, env={"FLEETRPC_EMQX_SECRET": "0123456789abcdef"})  # secrets: not printed
    assert again.emqx == s.emqx
    assert again.client_rpc == msgspec.structs.replace(s.client_rpc, webhook_headers={})  # secret, not printed
    with pytest.raises(ValidationError, match="FLEETRPC_CLIENT_RPC_HANDLERS.*not a JSON object"):
        load_server_settings(env={"FLEETRPC_CLIENT_RPC_HANDLERS": "a=b"})
    with pytest.raises(ValidationError, match="emqx.secret is required when emqx.enabled"):
        load_server_settings(env={"FLEETRPC_EMQX_ENABLED": "true"})
    with pytest.raises(ValidationError, match="emqx.secret must be at least 16"):
        load_server_settings(env={"FLEETRPC_EMQX_SECRET": "short"})
    with pytest.raises(ValidationError, match="webhook_methods needs client_rpc.webhook_url"):
        load_server_settings(env={"FLEETRPC_CLIENT_RPC_WEBHOOK_METHODS": "*"})


def test_thingsboards_environment_variables_set_what_fleetrpc_also_has():
    s = load_server_settings(env={"ACTORS_RPC_MAX_RETRIES": "3", "ACTORS_RPC_SEQUENTIAL": "true",
                                  "SQL_TTL_RPC_ENABLED": "false", "SQL_RPC_TTL_CHECKING_INTERVAL": "600000"})
    assert (s.store.max_retries, s.dispatch.strategy, s.store.ttl_enabled, s.store.ttl_check_interval_s) == (
        3, "SEQUENTIAL_ON_RESPONSE", False, 600.0)
    # the newer strategy variable wins over the older switch; fleetrpc's own name over both
    env = {"ACTORS_RPC_SEQUENTIAL": "true", "ACTORS_RPC_SUBMIT_STRATEGY_TYPE": "SEQUENTIAL_ON_ACK_FROM_DEVICE"}
    assert load_server_settings(env=env).dispatch.strategy == "SEQUENTIAL_ON_ACK"
    env["FLEETRPC_DISPATCH_STRATEGY"] = "BURST"
    env["ACTORS_RPC_MAX_RETRIES"] = "2"
    env["FLEETRPC_STORE_MAX_RETRIES"] = "4"
    s = load_server_settings(env=env)
    assert (s.dispatch.strategy, s.store.max_retries) == ("BURST", 4)
    # a bad value names the variable it came from
    for name, value in (("ACTORS_RPC_SEQUENTIAL", "sometimes"), ("ACTORS_RPC_MAX_RETRIES", "-1"),
                        ("SQL_RPC_TTL_CHECKING_INTERVAL", "2h"), ("ACTORS_RPC_SUBMIT_STRATEGY_TYPE", "FAST")):
        with pytest.raises(ValidationError, match=f"\\${name}"):
            load_server_settings(env={name: value})
