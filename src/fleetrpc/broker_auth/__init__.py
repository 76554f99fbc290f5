"""Devices authenticate at the broker: one rule for what a device may do
(:mod:`.acl`), enforced by Mosquitto's dynamic security plugin, which
fleetrpc provisions (:mod:`.dynsec`), or by EMQX, which asks fleetrpc's
HTTP hooks (:mod:`.emqx`).

A device connects with its access token as MQTT username (ThingsBoard's
convention; Mosquitto's plugin also needs the token as password) and may
publish and subscribe only inside its own topics ``{prefix}/d/{device_id}/...``;
only the server's own account may publish requests.  See docs/identity.md.
"""

from .acl import DeviceAcl, filter_within, topic_matches

__all__ = ["DeviceAcl", "filter_within", "topic_matches"]
