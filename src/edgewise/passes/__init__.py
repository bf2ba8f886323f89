"""Passes: one file each, a frozen config dataclass plus one function registered with the engine."""
from edgewise.passes import export, finetune, quantize  # noqa: F401  (registration)
