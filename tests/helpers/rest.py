"""One user's plain-HTTP session on the REST API, for the tests that read
status codes and error bodies as they are."""

from __future__ import annotations

import json


class Client:
    """``await c.get(path)`` -> (status, body: decoded JSON, else text)."""

    def __init__(self, api, token: str) -> None:
        self.api = api
        self.token = token

    async def call(self, method: str, path: str, body=None):
        status, raw, r = await self.api.request(method, path, self.token, json=body)
        if r.content_type == "application/json" and raw:
            return status, json.loads(raw)
        return status, raw.decode()

    async def get(self, path):
        return await self.call("GET", path)

    async def post(self, path, body=None):
        return await self.call("POST", path, body)

    async def delete(self, path):
        return await self.call("DELETE", path)
