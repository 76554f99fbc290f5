"""Settings of the Elves services (one typed object, passed in)."""

from __future__ import annotations

from typing import Literal

import msgspec

from ...errors import ValidationError

__all__ = ["ElvesSettings"]


class ElvesSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How the Elves services behave; every field has a working default."""

    #: How an app calling over MQTT is authenticated.  ``"key"``: the
    #: envelope carries the app's auth key (``key`` or ``auth_key``) and the
    #: topic's ``{app}`` level is that app's name or auth id.  ``"topic"``:
    #: the ``{app}`` level is the app's auth id and the broker's ACL is
    #: trusted to let only that app publish there (no key in the envelope,
    #: as in the seed).
    mqtt_auth: Literal["key", "topic"] = "key"
    #: An agent is online while its presence says so and its last heartbeat
    #: is at most this old (seconds; Elves: 600).  Its Last Will makes it
    #: offline at once.
    online_interval_s: float = 180.0
    #: Added to an instruction's timeout for the call to the agent, so that
    #: the agent's own "app exec timeout" answer arrives before the call's
    #: deadline.
    agent_grace_s: float = 5.0
    #: How long sendAsync waits for the agent to accept an instruction.
    accept_timeout_s: float = 10.0
    #: How long the HTTP POST to an app's processor may take.
    processor_timeout_s: float = 10.0
    #: Task logs older than this are deleted (0 keeps them forever).
    task_retention_days: float = 30.0
    #: How often the retention clean-up runs.
    retention_check_s: float = 3600.0

    def __post_init__(self) -> None:
        if self.online_interval_s <= 0 or self.agent_grace_s < 0 or self.accept_timeout_s <= 0:
            raise ValidationError("online_interval_s and accept_timeout_s must be > 0, agent_grace_s >= 0")
        if self.task_retention_days < 0 or self.retention_check_s <= 0 or self.processor_timeout_s <= 0:
            raise ValidationError("task_retention_days >= 0, retention_check_s and processor_timeout_s > 0")
