"""The multi-process cluster tests run `fleetrpc serve`'s parts in child
processes with the fault probes' rig (tests/faults/rig.py): its server
process, REST client and devices."""

from tests.faults.conftest import api_for, devices, figures, make_server  # noqa: F401  (fixtures)
