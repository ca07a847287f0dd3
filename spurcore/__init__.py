"""spurcore: find where a network memorizes its minority groups, and fix it.

The kernel: hook specifications (`spurcore.hookspecs`), the records plugins register
(`spurcore.specs`), typed data (`spurcore.data`), and the runner. Plugins import the markers
from here: `from spurcore import hookimpl`.
"""

from spurcore.hookspecs import hookimpl, hookspec

__version__ = "0.1.0"
__all__ = ["hookimpl", "hookspec", "__version__"]
