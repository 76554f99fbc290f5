"""The ``fleetrpc serve`` command."""

from __future__ import annotations

import sys

import click


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="TOML settings file (default: $FLEETRPC_CONFIG, else ./fleetrpc.toml if present)")
@click.option("--demo", is_flag=True, help="load ThingsBoard's demo accounts and a few devices")
@click.option("--node-id", default=None,
              help="this node's id (dispatch.node_id); unset: generated once and kept in server.data_dir "
                   "in a cluster, else host name and process id")
@click.option("--print-config", is_flag=True, help="print every setting, its value and what it does; exit")
def serve(config_path: str | None, demo: bool, print_config: bool, node_id: str | None) -> None:
    """Run the ThingsBoard-compatible RPC server (REST API, dispatcher,
    persistent RPC, metrics) until SIGTERM or Ctrl-C."""
    from ..config import load_server_settings, render
    from ..errors import ValidationError

    try:
        if node_id is not None:
            from ..cluster import validate_node_id

            validate_node_id(node_id)
        settings = load_server_settings(
            config_path, overrides={"dispatch": {"node_id": node_id}} if node_id is not None else None)
    except ValidationError as exc:
        click.echo(f"fleetrpc serve: configuration error: {exc}", err=True)
        sys.exit(2)
    if print_config:
        click.echo(render(settings), nl=False)
        return
    from ..runner import run
    from .context import ServerContext
    from .logs import configure_logging
    from .process import serve as serve_forever

    from ..errors import FleetRpcError

    configure_logging(settings.server.log_level, settings.server.log_format)
    ctx = ServerContext(settings)
    ctx.demo = demo
    try:
        run(serve_forever(settings, ctx=ctx))
    except (FleetRpcError, OSError, RuntimeError) as exc:
        # A part that cannot start (port taken, no broker, database down):
        # one clear line; the log above has the details.
        click.echo(f"fleetrpc serve: could not start: {exc}", err=True)
        sys.exit(1)
