"""Put the repository's ``tachograph`` package, and nothing else, into this distribution.

The package lives one level up (``../tachograph``) in the repository and at the top of an
unpacked sdist (which this same hook fills), so the source is looked up in both places.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class AgentPackageHook(BuildHookInterface):  # type: ignore[misc]  # hatchling: Any where not installed
    """Force-includes the ``tachograph`` package directory as ``tachograph``."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        """Add the package directory to the files of the sdist or wheel being built."""
        root = Path(self.root)
        for candidate in (root / "tachograph", root.parent / "tachograph"):
            if (candidate / "__init__.py").is_file():
                build_data["force_include"][str(candidate)] = "tachograph"
                return
        raise FileNotFoundError(
            f"no tachograph package next to {root} or in its parent: build tachograph-agent "
            "from the repository's agent/ directory (pip wheel ./agent) or from its sdist"
        )
