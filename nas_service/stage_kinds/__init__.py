"""Stage kinds: one registry entry per kind (``cell_search``, ``hypercuboid_search``, ``grid``, ``retrain``,
``evaluate``), each in its own module. See :mod:`.base` for what an entry holds and ``docs/extending.md``
for adding one."""

# isort: off  (the import order is the registration order, which specs' error messages list)
from . import cell_search  # noqa: F401
from . import hypercuboid_search  # noqa: F401
from . import grid  # noqa: F401
from . import retrain  # noqa: F401
from . import evaluate  # noqa: F401
# isort: on
from .base import STAGE_KINDS, StageKind, get_stage_kind, list_stage_kinds, register_stage_kind

__all__ = ["STAGE_KINDS", "StageKind", "get_stage_kind", "list_stage_kinds", "register_stage_kind"]
