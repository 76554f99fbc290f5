"""Transports: how the dispatcher reaches the broker.

``MqttTransport`` (gmqtt) is the real one.  Anything with the same small
interface can stand in: ``start(filters)``, ``close()``, ``publish(topic,
payload, qos, retain, token, properties)`` and the three callbacks
``on_message(topic, payload, properties)``, ``on_published(token)`` and
``on_connection(up)``.
"""

from .mqtt import MqttTransport, parse_url

__all__ = ["MqttTransport", "parse_url"]
