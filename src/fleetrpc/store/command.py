"""``fleetrpc db``: database maintenance."""

from __future__ import annotations

import click


@click.group()
def db() -> None:
    """Persistent-RPC store maintenance (SQLite or PostgreSQL)."""


@db.command()
@click.option("--url", envvar="FLEETRPC_STORE_URL", default=None,
              help="store URL (sqlite:///path.db or postgresql://...); default from settings")
@click.option("--config", default=None, help="TOML settings file")
def migrate(url: str | None, config: str | None) -> None:
    """Apply pending schema migrations (also done on every start)."""
    from ..config import Settings
    from ..runner import run
    from . import store_from_url

    store_url = url or Settings.load(config).store_url

    async def go() -> None:
        store = store_from_url(store_url)
        await store.open()  # open applies pending migrations
        try:
            version = await store.schema_version()
        finally:
            await store.close()
        click.echo(f"{store.backend} store at schema version {version}")

    run(go())
