"""nvfp4tools: inspect, size, convert and verify 4-bit LLM checkpoints.

Library entry points::

    from nvfp4tools.formats import read        # any supported checkpoint -> Checkpoint
    from nvfp4tools.inspect import build_report
"""

from ._version import __version__

__all__ = ["__version__"]
