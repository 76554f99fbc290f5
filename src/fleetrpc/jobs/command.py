"""``fleetrpc job``: run, watch and cancel fleet jobs on a server, from a shell.

    fleetrpc job run --type thermostat setValue 21 --rate 100/s --abort-at 5%

logs in to the server's REST API (``--url``, ``--username``; the password
from ``--password``, ``FLEETRPC_PASSWORD`` or a prompt), creates the job,
shows its progress live and exits 0 when every device succeeded, 1 when
some did not, 2 when the job was aborted, cancelled or failed.  Ctrl-C
cancels the job.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import click

from ..errors import ValidationError
from .model import parse_rate


def _params(text: str | None) -> Any:
    """The RPC debug terminal's rule: JSON if it parses, else the text."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _percent(text: str) -> float:
    value = text.strip().rstrip("%")
    try:
        pct = float(value)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a percentage (e.g. 5%)") from None
    if not 0 <= pct <= 100:
        raise click.BadParameter(f"{text!r} must be between 0% and 100%")
    return pct


def build_spec(
    *, method: str, params: str | None, device: tuple[str, ...], type_: str | None, label: str | None,
    name_pattern: str | None, customer: str | None, all_: bool, rate: str | None, max_in_flight: int | None,
    abort_at: str | None, min_executed: int, timeout: int | None, oneway: bool, persistent: bool,
    expiration: float | None, now_ms: int,
) -> dict[str, Any]:
    """The JSON body of ``POST /api/jobs`` from the command's options."""
    given = {"deviceIds": list(device), "deviceType": type_, "label": label, "namePattern": name_pattern,
             "customerId": customer, "all": all_}
    targets = {key: value for key, value in given.items() if value}  # the options given (all_: True)
    if len(targets) != 1:
        raise click.UsageError("name exactly one target: --device (repeatable), --type, --label, "
                               "--name-pattern, --customer or --all")
    body: dict[str, Any] = {"targets": targets, "method": method, "params": _params(params)}
    rollout: dict[str, Any] = {}
    if rate:
        try:
            rollout["maxPerMinute"] = parse_rate(rate)
        except ValidationError as exc:
            raise click.BadParameter(str(exc), param_hint="--rate") from None
    if max_in_flight:
        rollout["maxInFlight"] = max_in_flight
    if rollout:
        body["rollout"] = rollout
    if abort_at:
        body["abort"] = [{"failureType": "ALL", "thresholdPercentage": _percent(abort_at),
                          "minExecuted": min_executed}]
    flags = {"timeout": timeout, "oneway": oneway, "persistent": persistent}
    body.update((key, value) for key, value in flags.items() if value)
    if expiration:
        body["expirationTime"] = now_ms + int(expiration * 1000)
    return body


class Client:
    """The few REST calls the command makes, with ThingsBoard's auth."""

    def __init__(self, url: str) -> None:
        import aiohttp

        self.url = url.rstrip("/")
        self._session = aiohttp.ClientSession()
        self._headers: dict[str, str] = {}

    async def login(self, username: str, password: str) -> None:
        data = await self.request("POST", "/api/auth/login", {"username": username, "password": password})
        self._headers = {"X-Authorization": f"Bearer {data['token']}"}

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        async with self._session.request(method, self.url + path, json=body, headers=self._headers) as resp:
            text = await resp.text()
            if resp.status >= 400:
                try:
                    message = json.loads(text).get("message", text)
                except (ValueError, AttributeError):
                    message = text
                raise click.ClickException(f"{method} {path}: HTTP {resp.status}: {message}")
            return json.loads(text) if text else None

    async def close(self) -> None:
        await self._session.close()


_EXIT = {"COMPLETED": 0, "ABORTED": 2, "CANCELLED": 2, "FAILED": 2}


async def _run(client: Client, body: dict, interval: float, quiet: bool) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    job = await client.request("POST", "/api/jobs", body)
    job_id = job["id"]["id"]
    click.echo(f"job {job_id} created", err=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[detail]}"))
    try:
        with Progress(*columns, disable=quiet, transient=False) as progress:
            bar = progress.add_task(body["method"], total=None, detail="")
            while True:
                job = await client.request("GET", f"/api/job/{job_id}")
                c = job["result"]["counts"]
                done = c["succeeded"] + c["failed"] + c["timedOut"] + c["offline"] + c["cancelled"] + c["skipped"]
                detail = (f"ok {c['succeeded']}  failed {c['failed']}  timed out {c['timedOut']}  "
                          f"offline {c['offline']}  in flight {c['inProgress']}")
                progress.update(bar, total=c["total"] or None, completed=done, detail=detail)
                if job["status"] in _EXIT:
                    break
                await asyncio.sleep(interval)
    except (KeyboardInterrupt, asyncio.CancelledError):
        click.echo("cancelling the job ...", err=True)
        job = await client.request("POST", f"/api/job/{job_id}/cancel")
    result = job["result"]
    click.echo(json.dumps({"id": job_id, "status": job["status"], "counts": result["counts"],
                           "aggregate": result["aggregate"], "error": result["generalError"]}, indent=2))
    code = _EXIT.get(job["status"], 2)
    if code == 0 and result["counts"]["succeeded"] < result["counts"]["total"]:
        code = 1
    return code


@click.group()
def job() -> None:
    """Fleet jobs: one RPC to many devices, on a running server."""


_server_options = [
    click.option("--url", default="http://127.0.0.1:8080", show_default=True, envvar="FLEETRPC_URL",
                 help="The server's base URL."),
    click.option("--username", "-u", envvar="FLEETRPC_USERNAME", required=True,
                 help="A tenant administrator or customer user (env FLEETRPC_USERNAME)."),
    click.option("--password", envvar="FLEETRPC_PASSWORD", prompt=True, hide_input=True,
                 help="Its password (env FLEETRPC_PASSWORD, else a prompt)."),
]


def _with_server(fn):
    for option in reversed(_server_options):
        fn = option(fn)
    return fn


def _call(url: str, username: str, password: str, work) -> Any:
    async def main():
        client = Client(url)
        try:
            await client.login(username, password)
            return await work(client)
        finally:
            await client.close()

    return asyncio.run(main())


@job.command("run")
@click.argument("method")
@click.argument("params", required=False)
@click.option("--device", "-d", multiple=True, help="A target device id (repeatable).")
@click.option("--type", "type_", help="Every device of this type.")
@click.option("--label", help="Every device with this label.")
@click.option("--name-pattern", help="Devices whose name matches (* is the wildcard).")
@click.option("--customer", help="Every device of this customer (id).")
@click.option("--all", "all_", is_flag=True, help="Every device of the tenant.")
@click.option("--rate", help="At most this many devices started per second or minute: 100/s, 600/min.")
@click.option("--max-in-flight", type=click.IntRange(1), help="At most this many calls open at once.")
@click.option("--abort-at", help="Abort once this share of the devices with an outcome failed: 5%.")
@click.option("--min-executed", type=click.IntRange(1), default=10, show_default=True,
              help="Devices with an outcome before --abort-at applies.")
@click.option("--timeout", type=click.IntRange(1), help="One call's timeout in milliseconds.")
@click.option("--oneway", is_flag=True, help="One-way calls (no reply awaited).")
@click.option("--persistent", is_flag=True, help="Persistent calls: offline devices get them when they connect.")
@click.option("--expiration", type=float, help="Persistent calls expire after this many seconds.")
@click.option("--interval", type=float, default=0.5, show_default=True, help="Seconds between progress polls.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar; only the final summary.")
@_with_server
def run(method, params, device, type_, label, name_pattern, customer, all_, rate, max_in_flight, abort_at,
        min_executed, timeout, oneway, persistent, expiration, interval, quiet, url, username, password):
    """Call METHOD with PARAMS (JSON, or text) on every target device."""
    import time

    body = build_spec(
        method=method, params=params, device=device, type_=type_, label=label, name_pattern=name_pattern,
        customer=customer, all_=all_, rate=rate, max_in_flight=max_in_flight, abort_at=abort_at,
        min_executed=min_executed, timeout=timeout, oneway=oneway, persistent=persistent,
        expiration=expiration, now_ms=int(time.time() * 1000),
    )
    sys.exit(_call(url, username, password, lambda c: _run(c, body, interval, quiet)))


@job.command("status")
@click.argument("job_id")
@_with_server
def status(job_id, url, username, password):
    """Show a job (as JSON)."""
    click.echo(json.dumps(_call(url, username, password, lambda c: c.request("GET", f"/api/job/{job_id}")),
                          indent=2))


@job.command("cancel")
@click.argument("job_id")
@_with_server
def cancel(job_id, url, username, password):
    """Cancel a job; devices not started yet are skipped."""
    job = _call(url, username, password, lambda c: c.request("POST", f"/api/job/{job_id}/cancel"))
    click.echo(f"job {job_id}: {job['status']}")


@job.command("list")
@click.option("--page-size", type=click.IntRange(1, 1000), default=20, show_default=True)
@_with_server
def list_(page_size, url, username, password):
    """The newest jobs of the tenant."""
    page = _call(url, username, password, lambda c: c.request("GET", f"/api/jobs?pageSize={page_size}&page=0"))
    for j in page["data"]:
        c = j["result"]["counts"]
        click.echo(f"{j['id']['id']}  {j['status']:<9}  {j['key']:<24}  {c['succeeded']}/{c['total']} ok")
