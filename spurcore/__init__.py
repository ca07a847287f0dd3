"""spurcore: find where a network memorizes its minority groups, and fix it.

The kernel: hook specifications (`spurcore.hookspecs`), the records plugins register
(`spurcore.specs`), typed data (`spurcore.data`), and the runner. Plugins import the marker
from here (`from spurcore import hookimpl`) and every other kernel name from `spurcore.api`.
"""

from spurcore.hookspecs import hookimpl, hookspec

__version__ = "0.1.0"
__all__ = ["hookimpl", "hookspec", "__version__"]
