"""Build script: compiles the Cython core in ``src/fleetrpc/_core``.

``FLEETRPC_NO_EXTENSIONS=1`` builds a pure-Python package.  ``FLEETRPC_DEBUG=1``
writes ``cython -a`` annotations, compiles with ``-O0 -g`` and turns on the
leak counters (the C macro ``FLEETRPC_DEBUG``, 0 in a normal build: live
wheel entries, pending calls, queue states and queued calls; each module's
``debug_counters()``).  Line tracing (for coverage or profiling of the
compiled code) slows everything down and is separate: ``FLEETRPC_LINETRACE=1``.
A machine without a C compiler still gets a working package: a failed compile
falls back on the pure-Python twins with a warning (as aiohttp and yarl do).
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

NO_EXTENSIONS = bool(os.environ.get("FLEETRPC_NO_EXTENSIONS"))
DEBUG = bool(os.environ.get("FLEETRPC_DEBUG"))
LINETRACE = bool(os.environ.get("FLEETRPC_LINETRACE"))
if sys.implementation.name != "cpython":
    NO_EXTENSIONS = True

CORE_MODULES = ["wheel", "pending", "queues", "codec", "mqttfast"]


def _extensions():
    macros = [("FLEETRPC_DEBUG", "1" if DEBUG else "0")]
    if LINETRACE:
        macros.append(("CYTHON_TRACE_NOGIL", "1"))
    args = ["-O2"] if not DEBUG else ["-O0", "-g"]
    exts = []
    for name in CORE_MODULES:
        pyx = f"src/fleetrpc/_core/{name}.pyx"
        if os.path.exists(pyx):
            exts.append(
                Extension(
                    f"fleetrpc._core.{name}",
                    [pyx],
                    define_macros=macros,
                    extra_compile_args=args,
                )
            )
    if not exts:
        return []
    from Cython.Build import cythonize  # imported only when we compile

    return cythonize(
        exts,
        compiler_directives={
            "language_level": "3",
            "embedsignature": True,
            "linetrace": LINETRACE,
            "profile": LINETRACE,
        },
        annotate=DEBUG,
    )


class OptionalBuildExt(build_ext):
    """Compile the core, but never make it a hard requirement."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # no compiler, no headers, ...
            self._warn(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._warn(exc)

    @staticmethod
    def _warn(exc):
        print(
            f"WARNING: fleetrpc's compiled core could not be built ({exc!r}); "
            "the pure-Python twins will be used.",
            file=sys.stderr,
        )


setup(
    ext_modules=[] if NO_EXTENSIONS else _extensions(),
    cmdclass={"build_ext": OptionalBuildExt},
)
