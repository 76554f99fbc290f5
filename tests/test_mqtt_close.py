"""MqttTransport.close is a clean DISCONNECT: the broker discards the Last
Will, and what was published just before, at QoS 0, still arrives.  (Its
writes wait for the end of the loop iteration; the DISCONNECT once did too,
and the socket closed under it, so every clean close published the Will.)
abort() is the other way out: no DISCONNECT, and the Will is published."""

from __future__ import annotations

import re
import uuid

import pytest

from fleetrpc.transport.mqtt import MqttTransport
from tests.helpers.waiting import wait_until


def _ended(broker, client_id: str) -> bool:
    """Mosquitto logged the end of ``client_id``'s connection: "Client <id>
    disconnected." (a DISCONNECT), "... closed its connection." (none), or
    another reason; newer releases put "(<address>)" after the id.  Its
    do_disconnect() writes that line, then context__disconnect() publishes
    or drops the Will, in one call of its one thread."""
    log = broker.log_path.read_text(errors="replace")
    cid = re.escape(client_id)
    return re.search(rf"Client {cid}(?: \([^)]*\))? (?:disconnected|closed its connection|has exceeded)"
                     rf"|on client {cid}\b", log) is not None


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize("ending", ["close", "abort"])
async def test_only_an_abort_publishes_the_will(mqtt_broker, version, ending):
    root = f"close{uuid.uuid4().hex[:8]}"
    got: list[tuple[str, bytes]] = []
    watcher = MqttTransport(mqtt_broker.url)
    watcher.on_message = lambda topic, payload, props: got.append((topic, payload))
    await watcher.start([(f"{root}/#", 1)])
    t = MqttTransport(mqtt_broker.url, version=version, will=(f"{root}/will", b"gone", 1, False))
    await t.start()
    try:
        t.publish(f"{root}/last", b"words", 0)
        if ending == "close":
            await t.close()
        else:
            t.abort()
        if ending == "abort":  # (as power lost: what was not written yet is lost too)
            await wait_until(lambda: (f"{root}/will", b"gone") in got)
        else:
            await wait_until(lambda: (f"{root}/last", b"words") in got)
            # A positive barrier instead of a sleep (which could only pass
            # falsely): Mosquitto logs the end of a connection in the same
            # step of its one thread that publishes or drops the Will, so a
            # message published after that line is routed after the Will
            # would have been, and reaches the watcher after it (one
            # connection, QoS 1 both: in order).  Needs the broker's log: a
            # private throwaway Mosquitto (mqtt_broker), not FLEETRPC_MQTT_URL.
            await wait_until(lambda: _ended(mqtt_broker, t.client_id))
            watcher.publish(f"{root}/barrier", b"after", 1)
            await wait_until(lambda: (f"{root}/barrier", b"after") in got)
            assert (f"{root}/will", b"gone") not in got
    finally:
        await t.close()
        await watcher.close()
