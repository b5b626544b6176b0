"""Methods: `Method` (what the trainer trains) and its registry, then one module per paper.

The trainer (`samkit.train`) imports this package; nothing here imports the trainer. A config's
`method: name` is built by `build_method`, which imports the kit's method module on first use.
"""

from samkit.methods.base import KIT_METHODS, METHODS, Method, build_method, register_method

__all__ = ["KIT_METHODS", "METHODS", "Method", "build_method", "register_method"]
