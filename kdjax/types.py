"""Type names shared across kdjax."""
from __future__ import annotations

from typing import Any

# a nested structure of arrays (params, batch statistics, optimizer or method state)
PyTree = Any
