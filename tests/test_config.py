"""Settings: enums by name in TOML and the environment, as the README
writes them; durations say their unit."""

from __future__ import annotations

import pytest

from fleetrpc import DeliveryStrategy, OfflinePolicy, Settings
from fleetrpc.config import parse_strategy
from fleetrpc.errors import ValidationError


@pytest.mark.parametrize("value, expected", [
    ("SEQUENTIAL_ON_RESPONSE", DeliveryStrategy.SEQUENTIAL_ON_RESPONSE),
    ("sequential_on_ack", DeliveryStrategy.SEQUENTIAL_ON_ACK),
    ("sequential-on-response", DeliveryStrategy.SEQUENTIAL_ON_RESPONSE),
    ("SEQUENTIAL_ON_RESPONSE_FROM_DEVICE", DeliveryStrategy.SEQUENTIAL_ON_RESPONSE),
    ("BURST", DeliveryStrategy.BURST),
    ("2", DeliveryStrategy.SEQUENTIAL_ON_RESPONSE),
])
def test_strategy_from_the_environment(value, expected):
    assert Settings.load(env={"FLEETRPC_STRATEGY": value, "FLEETRPC_NODE_ID": "n"}).strategy is expected


def test_enums_from_toml(tmp_path):
    path = tmp_path / "fleetrpc.toml"
    path.write_text('node_id = "n"\nstrategy = "SEQUENTIAL_ON_ACK"\noffline = "WAIT"\n')
    s = Settings.load(str(path), env={})
    assert s.strategy is DeliveryStrategy.SEQUENTIAL_ON_ACK and s.offline is OfflinePolicy.WAIT


def test_enums_by_name_in_the_constructor():
    s = Settings(node_id="n", strategy="sequential_on_response", offline="wait")
    assert s.strategy is DeliveryStrategy.SEQUENTIAL_ON_RESPONSE and s.offline is OfflinePolicy.WAIT
    assert Settings(node_id="n").offline is OfflinePolicy.FAIL


@pytest.mark.parametrize("value", ["FAST", "", True, 7, None])
def test_bad_strategy_names_say_which_exist(value):
    with pytest.raises(ValidationError, match="BURST, SEQUENTIAL_ON_ACK, SEQUENTIAL_ON_RESPONSE"):
        parse_strategy(value)
    if value is not None:
        with pytest.raises(ValidationError):
            Settings.load(env={"FLEETRPC_STRATEGY": str(value)} if value != "" else {"FLEETRPC_STRATEGY": ""})


def test_bad_offline_policy():
    with pytest.raises(ValidationError, match="offline"):
        Settings.load(env={"FLEETRPC_OFFLINE": "maybe"})


def test_presence_bounds_are_checked():
    with pytest.raises(ValidationError):
        Settings(node_id="n", presence_max_devices=0)


@pytest.mark.parametrize("days", [0.5, 1.9, -1, "7"])
def test_ttl_days_are_whole_days(days):
    # 0.5 used to be cut to 0 by the TTL clean-up: "keep forever"
    with pytest.raises(ValidationError, match="ttl_days"):
        Settings(node_id="n", ttl_days=days)
    assert Settings(node_id="n", ttl_days=0).ttl_days == 0


def test_the_servers_ttl_days_are_whole_days(tmp_path):
    from fleetrpc.config.server import load_server_settings

    path = tmp_path / "fleetrpc.toml"
    path.write_text("[store]\nttl_days = 0.5\n")
    with pytest.raises(ValidationError, match="ttl_days"):
        load_server_settings(path, env={})
    path.write_text("[store]\nttl_days = 2\n")
    assert load_server_settings(path, env={}).store.ttl_days == 2
    path.write_text("[store]\nttl_days = 0\n")  # keep them, as the library's Settings
    assert load_server_settings(path, env={}).store.ttl_days == 0
