"""``fleetrpc simulate``: run a fleet of simulated devices against a broker."""

from __future__ import annotations

import asyncio
import time

import click

from .fleet import Behaviour, Fleet, FleetError


@click.command()
@click.option("--devices", "-n", default=1000, show_default=True, type=click.IntRange(1),
              help="Number of simulated devices (each its own MQTT connection).")
@click.option("--url", default="mqtt://127.0.0.1:1883", show_default=True,
              help="Broker URL (mqtt://host:port).")
@click.option("--processes", "-p", default=None, type=click.IntRange(0),
              help="Worker processes (default: one per CPU, at most 4; 0 = in this process).")
@click.option("--prefix", default="fleetrpc", show_default=True, help="Topic prefix.")
@click.option("--first", default=0, show_default=True, type=click.IntRange(0),
              help="Index of the first device (ids dev-00000, ...).")
@click.option("--qos", default=1, show_default=True, type=click.IntRange(0, 1),
              help="QoS of subscriptions and replies.")
@click.option("--latency-ms", default=0.0, show_default=True, type=click.FloatRange(0),
              help="Fixed reply delay.")
@click.option("--jitter-ms", default=0.0, show_default=True, type=click.FloatRange(0),
              help="Extra random delay, uniform in [0, jitter].")
@click.option("--error-rate", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help='Share of requests answered {"error": ...}.')
@click.option("--drop-rate", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Share of requests never answered.")
@click.option("--slow-fraction", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Share of devices that are slow.")
@click.option("--slow-latency-ms", default=1000.0, show_default=True, type=click.FloatRange(0),
              help="Reply delay of a slow device.")
@click.option("--ack/--no-ack", default=False, show_default=True,
              help="Acknowledge delivery before replying.")
@click.option("--presence/--no-presence", default=True, show_default=True,
              help="Retained presence on connect, offline Last Will.")
@click.option("--churn", "churn_s", default=0.0, show_default=True, type=click.FloatRange(0),
              help="Seconds between churn rounds (0 = none): devices drop abruptly, the Will fires.")
@click.option("--churn-fraction", default=0.05, show_default=True, type=click.FloatRange(0, 1),
              help="Share of online devices dropped per churn round.")
@click.option("--offline-s", default=1.0, show_default=True, type=click.FloatRange(0),
              help="How long a churned device stays away.")
@click.option("--duration", default=0.0, show_default=True, type=click.FloatRange(0),
              help="Seconds to run (0 = until Ctrl-C, at most one day).")
@click.option("--seed", default=None, type=int, help="Random seed (errors, drops, churn).")
@click.option("--device", "device_ids", multiple=True,
              help="Run this one device (repeatable), a widget device with a level behind getValue/setValue, "
                   "instead of a fleet; its --token (in the same order) is the MQTT username.")
@click.option("--token", "tokens", multiple=True, help="The access token of each --device.")
def simulate(devices, url, processes, prefix, first, qos, latency_ms, jitter_ms, error_rate,
             drop_rate, slow_fraction, slow_latency_ms, ack, presence, churn_s, churn_fraction,
             offline_s, duration, seed, device_ids, tokens):
    """Simulate DEVICES devices that answer fleetrpc requests.

    Each device subscribes to {prefix}/d/{id}/req/# and replies on
    .../res/{node}/{rid}.  Methods: echo (default: reply with the params),
    sleep ({"ms": n}), fail (always an error), notify (never a reply: for
    one-way calls).  Counters are printed every second.
    """
    if device_ids:
        if tokens and len(tokens) != len(device_ids):
            raise click.UsageError("give one --token per --device, or none")
        _until_stopped(lambda stop: _widgets(url, prefix, list(device_ids), list(tokens) or [None] * len(device_ids),
                                             duration if duration > 0 else 86400.0, stop))
        return
    behaviour = Behaviour(
        latency_ms=latency_ms, jitter_ms=jitter_ms, error_rate=error_rate, drop_rate=drop_rate,
        slow_fraction=slow_fraction, slow_latency_ms=slow_latency_ms, ack=ack, presence=presence,
        churn_interval_s=churn_s, churn_fraction=churn_fraction, offline_s=offline_s,
    )
    limit = duration if duration > 0 else 86400.0
    fleet = Fleet(url, devices, processes=processes, behaviour=behaviour, prefix=prefix, qos=qos,
                  first=first, seed=seed, lifetime=limit + 60.0)
    try:
        _until_stopped(lambda stop: _simulate(fleet, limit, stop))
    except FleetError as exc:
        raise click.ClickException(str(exc)) from None


def _until_stopped(work) -> None:
    """Run ``work(stop)`` on the event loop; Ctrl-C or SIGTERM sets ``stop``."""
    from ..runner import run, stop_on_signals

    async def main() -> None:
        with stop_on_signals(asyncio.Event()) as stop:
            await work(stop)

    run(main())


async def _widgets(url: str, prefix: str, device_ids: list[str], tokens: list, limit: float,
                   stop: asyncio.Event) -> None:
    """A few widget devices on their own connections, until Ctrl-C."""
    from .widgets import WidgetDevice

    devices = [WidgetDevice(d, url, token=t, prefix=prefix) for d, t in zip(device_ids, tokens)]
    try:
        await asyncio.gather(*(d.connect() for d in devices))
    except Exception as exc:
        raise click.ClickException(f"could not connect to {url}: {exc}") from None
    click.echo(f"{len(devices)} device(s) connected to {url}; they answer getValue, setValue, rpcCommand, "
               "getTemperature and echo; Ctrl-C stops", err=True)
    seen = 0
    try:
        end = time.monotonic() + limit
        while not stop.is_set() and time.monotonic() < end:
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except asyncio.TimeoutError:
                pass
            for d in devices:
                for method, params in d.received[seen:] if len(devices) == 1 else []:
                    click.echo(f"{d.device_id}: {method}({params!r}) -> level {d.level}", err=True)
            seen = len(devices[0].received) if len(devices) == 1 else 0
    finally:
        await asyncio.gather(*(d.close() for d in devices), return_exceptions=True)


async def _simulate(fleet: Fleet, limit: float, stop: asyncio.Event) -> None:
    t0 = time.monotonic()
    click.echo(f"connecting {len(fleet)} devices to {fleet.url} ...", err=True)
    stats = await fleet.start()
    click.echo(f"{stats['online']} devices online in {time.monotonic() - t0:.1f} s "
               f"({fleet.device_ids[0]} .. {fleet.device_ids[-1]}); Ctrl-C stops", err=True)
    start = time.monotonic()
    last = stats
    last_t = start
    try:
        while not stop.is_set() and time.monotonic() - start < limit:
            try:
                await asyncio.wait_for(stop.wait(), min(1.0, max(0.0, limit - (time.monotonic() - start))))
            except asyncio.TimeoutError:
                pass
            now = time.monotonic()
            stats = await fleet.stats()
            rate = (stats["requests"] - last["requests"]) / max(now - last_t, 1e-9)
            click.echo(
                f"{now - start:7.1f}s online {stats['online']:>6}  requests {stats['requests']:>9} "
                f"({rate:,.0f}/s)  replies {stats['replies']:>9}  errors {stats['errors']}  "
                f"dropped {stats['dropped']}  churned {stats['churned']}",
                err=True,
            )
            last, last_t = stats, now
    finally:
        final = await fleet.stop()
        click.echo("final: " + ", ".join(f"{k}={v}" for k, v in sorted(final.items())), err=True)
