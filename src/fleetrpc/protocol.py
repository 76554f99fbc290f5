"""Moved to :mod:`fleetrpc.wire`.

Kept only because the compiled codec (``_core/codec.pyx``, on the core
branch) still imports ``fleetrpc.protocol``; delete this module once it
imports ``fleetrpc.wire``.  Nothing else may import it."""

from .wire import *  # noqa: F401,F403
from .wire import __all__  # noqa: F401
