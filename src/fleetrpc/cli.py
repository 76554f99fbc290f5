"""The ``fleetrpc`` command."""

from __future__ import annotations

import importlib

try:
    import click
except ImportError as exc:  # `pip install fleetrpc` is the library only
    raise ImportError(
        "the fleetrpc command needs its 'cli' extra: pip install 'fleetrpc[cli]' "
        "(or 'fleetrpc[all]')"
    ) from exc


class _LazyGroup(click.Group):
    """Subcommands live beside what they drive; import them only when used,
    so ``fleetrpc --help`` stays fast and one broken extra cannot break all."""

    _commands = {
        "agent": "fleetrpc.agent.command:agent",
        "demo": "fleetrpc.demo:demo",
        "simulate": "fleetrpc.sim.command:simulate",
        "bench": "fleetrpc.bench.command:bench",
        "db": "fleetrpc.store.command:db",
        "serve": "fleetrpc.server.command:serve",
        "admin": "fleetrpc.admin:admin",
        "job": "fleetrpc.jobs.command:job",
    }

    def list_commands(self, ctx):
        return sorted(self._commands)

    def get_command(self, ctx, name):
        target = self._commands.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=_LazyGroup)
@click.version_option(package_name="fleetrpc")
def main() -> None:
    """fleetrpc: fan RPCs out to fleets of MQTT devices and bring the answers back."""


if __name__ == "__main__":
    main()
