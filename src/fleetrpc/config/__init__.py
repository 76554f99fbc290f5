"""Typed settings, from defaults, a TOML file and ``FLEETRPC_*`` variables.

Two objects, one per way of running fleetrpc:

:class:`Settings` (``config/library.py``)
    The flat settings of one dispatcher node: what the library, ``fleetrpc
    demo`` and ``fleetrpc bench`` take (``Dispatcher(Settings(...))``).
:class:`ServerSettings` (``config/server.py``)
    ``fleetrpc serve``: one typed section per part of the server (``mqtt``,
    ``dispatch``, ``store``, ``rpc``, ``http``, ``jwt``, ``auth``,
    ``rate_limits``, ``events``, ``elves``, ``endpoint``, ``server``), loaded with
    :func:`load_server_settings`; :meth:`ServerSettings.library` maps its
    sections onto a :class:`Settings` for the dispatcher and the engine.

:func:`describe` lists every server setting with its value and its
documentation (``fleetrpc serve --print-config``).
"""

from __future__ import annotations

from .describe import describe, render
from .library import Settings, parse_enum, parse_strategy
from . import server as _server
from .server import *  # noqa: F403 (the sections, ServerSettings, env_name, load_server_settings)

__all__ = sorted([*_server.__all__, "Settings", "describe", "parse_enum", "parse_strategy", "render"])
