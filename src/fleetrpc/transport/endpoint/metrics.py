"""The device endpoint's counters for Prometheus (the server's ``/metrics``).

A collector read at scrape time: the endpoint counts in plain integers
(:class:`EndpointStats`), nothing is counted twice.
"""

from __future__ import annotations

from typing import Any, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

__all__ = ["EndpointCollector"]

#: EndpointStats field -> help text; every counter is fleetrpc_endpoint_{field}_total
_COUNTERS = {
    "accepted": "Device connections accepted",
    "refused_max_connections": "Connections closed at once: endpoint.max_connections reached",
    "refused_auth": "CONNECTs refused: no, empty or unknown access token",
    "refused_unavailable": ("CONNECTs refused with 'server unavailable': the device registry could not be read, "
                            "or did not answer within endpoint.auth_timeout"),
    "takeovers": "Sessions taken over by a new connection with the same client id",
    "closed_protocol": "Connections closed for a malformed or illegal packet",
    "closed_too_large": "Connections closed for a packet over endpoint.max_payload",
    "closed_keepalive": "Connections closed after 1.5 keepalives of silence",
    "closed_rate_limit": "Connections closed over endpoint.rate_limit",
    "closed_slow_reader": "Connections dropped as slow readers",
    "closed_connect_timeout": "Connections dropped without a CONNECT in time",
    "closed_other": "Connections closed for other reasons",
    "requests": "Requests sent to directly connected devices",
    "retries_merged": ("Retries of persistent calls a ThingsBoard device had and had not answered "
                       "(not sent again; its answer goes to the retry)"),
    "responses": "Responses from directly connected devices",
    "unknown_response": "Responses to no request of the session (dropped)",
    "client_calls": "Client-side calls from directly connected devices",
    "session_limits": "getSessionLimits answered by the endpoint",
    "undeliverable": "Messages for devices not connected here",
    "too_large_for_device": "Requests over a device's Maximum Packet Size (not sent)",
    "ignored": "Telemetry, attributes and other topics acknowledged and ignored",
    "attribute_requests": ("Attribute requests, answered with no attribute (fleetrpc keeps none); "
                           "a gateway's once its sub-device is bound"),
    "refused_topic": "Publishes on topics that are not the device's own (dropped)",
    "stored_sessions_dropped": ("Disconnected sessions forgotten before their expiry: "
                                "endpoint.max_stored_sessions reached"),
    "refused_subdevices": "Sub-device names a gateway announced beyond endpoint.max_subdevices (ignored)",
}


class EndpointCollector:
    """``registry.register(EndpointCollector(endpoint))``."""

    def __init__(self, endpoint: Any) -> None:
        self.endpoint = endpoint

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[Any]:
        ep = self.endpoint
        yield GaugeMetricFamily("fleetrpc_endpoint_connections", "Open device connections on the endpoint",
                                value=ep.connection_count)
        yield GaugeMetricFamily("fleetrpc_endpoint_devices",
                                "Devices with an authenticated connection on the endpoint", value=len(ep._sessions))
        yield GaugeMetricFamily("fleetrpc_endpoint_reachable_devices",
                                "Devices (and gateways' sub-devices) subscribed to their RPC topic on the endpoint",
                                value=len(ep._routes))
        yield GaugeMetricFamily("fleetrpc_endpoint_http_devices",
                                "Devices using ThingsBoard's HTTP device API (polling, or answers awaited)",
                                value=len(ep.http))
        stats = ep.stats
        for name, text in _COUNTERS.items():
            yield CounterMetricFamily(f"fleetrpc_endpoint_{name}", text, value=getattr(stats, name))
