"""``[elves]`` of the server's settings: every field of the services' own
settings objects is there with the same default, the environment and TOML
reach them, bad values are refused naming the key."""

from __future__ import annotations

import msgspec
import pytest

from fleetrpc.config import ElvesSection, ServerSettings, load_server_settings, render
from fleetrpc.errors import ValidationError
from fleetrpc.services.elves import ElvesSettings
from fleetrpc.services.elves.cmdb import CmdbSettings
from fleetrpc.services.elves.cron import CronSettings


@pytest.mark.parametrize("prefix, cls", [("", ElvesSettings), ("cron_", CronSettings), ("cmdb_", CmdbSettings)])
def test_every_service_setting_is_in_the_section_with_its_default(prefix, cls):
    section = {f.name: f for f in msgspec.structs.fields(ElvesSection)}
    for field in msgspec.structs.fields(cls):
        mine = section.get(prefix + field.name)
        assert mine is not None, f"elves.{prefix}{field.name} is missing"
        assert mine.default == field.default, field.name
    # ...and the section builds them with its values
    assert getattr(ElvesSection(), {"": "elves", "cron_": "cron", "cmdb_": "cmdb"}[prefix])() == cls()


def test_section_values_reach_the_services(tmp_path):
    path = tmp_path / "f.toml"
    path.write_text('[elves]\ncron_timezone = "Asia/Shanghai"\nmqtt_auth = "topic"\n')
    s = load_server_settings(path, env={"FLEETRPC_ELVES_CRON_LOOKAHEAD_S": "0.5",
                                        "FLEETRPC_ELVES_CMDB_UPSTREAM_URL": "http://cmdb/{ip}"})
    assert s.elves.cron() == CronSettings(lookahead_s=0.5, timezone="Asia/Shanghai")
    assert s.elves.elves().mqtt_auth == "topic"
    assert s.elves.cmdb().upstream_url == "http://cmdb/{ip}"
    assert "[elves]" in render(s) and 'cron_timezone = "Asia/Shanghai"' in render(s)
    assert ServerSettings().elves.enabled is True


@pytest.mark.parametrize("env, words", [
    ({"FLEETRPC_ELVES_CRON_TIMEZONE": "Mars/Olympus"}, "elves.cron_timezone"),
    ({"FLEETRPC_ELVES_MQTT_AUTH": "password"}, "elves.mqtt_auth"),
    ({"FLEETRPC_ELVES_ONLINE_INTERVAL_S": "0"}, "elves.online_interval_s"),
    ({"FLEETRPC_ELVES_CMDB_UPSTREAM_URL": "ftp://x/{ip}"}, "elves.cmdb_upstream_url"),
])
def test_bad_values_name_the_key(env, words):
    with pytest.raises(ValidationError, match=words.replace(".", r"\.")):
        load_server_settings(env=env)
