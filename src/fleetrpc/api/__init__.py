"""The HTTP API: aiohttp application factory, ThingsBoard's REST API,
authentication, metrics, OpenAPI.  Built by :func:`fleetrpc.api.app.create_app`."""
