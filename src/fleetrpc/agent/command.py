"""``fleetrpc agent``: run an Elves agent until interrupted."""

from __future__ import annotations

import asyncio
import socket

import click


def _primary_ip() -> str:
    # The address of the interface that routes outwards (no packet is sent).
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


@click.command()
@click.option("--url", default="mqtt://127.0.0.1:1883", show_default=True, help="MQTT broker URL.")
@click.option("--ip", default=None, help="This agent's IP, how Elves addresses it [default: the primary IP].")
@click.option("--device-id", default=None, help="Device id on the wire [default: the IP; in a server, the device's UUID].")
@click.option("--root", default=".", show_default=True, type=click.Path(file_okay=False), help="Holds apps/<app>/ and conf/cron.json.")
@click.option("--prefix", default="fleetrpc", show_default=True, help="Topic prefix.")
@click.option("--heartbeat", "interval", default=60.0, show_default=True, help="Seconds between heartbeats.")
@click.option("--username", default=None, help="MQTT user name (a device's access token).")
@click.option("--password", default=None, help="MQTT password.")
@click.option("--max-run-timeout", default=86400.0, show_default=True,
              help="Seconds a run may last at most (its timeout 0, 'none', included).")
@click.option("--cron-timezone", default=None, help="Time zone of the self crons' rules [default: the machine's local time].")
def agent(url, ip, device_id, root, prefix, interval, username, password, max_run_timeout, cron_timezone) -> None:
    """Run an Elves agent: answer the scheduler's instructions, report heartbeats."""
    from .agent import ElvesAgent

    async def main() -> None:
        a = ElvesAgent(
            ip or _primary_ip(), url, root=root, device_id=device_id, heartbeat_interval=interval,
            prefix=prefix, username=username, password=password, cron_timezone=cron_timezone,
            max_run_timeout=max_run_timeout,
        )
        with stop_on_signals(asyncio.Event()) as stop:
            await a.start()
            click.echo(f"elves agent {a.ip} (device {a.client.device_id}) on {url}, apps: {sorted(a.apps())}")
            await stop.wait()
            await a.close()

    from ..runner import run, stop_on_signals

    run(main())
