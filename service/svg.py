"""SVG diagrams: DOT text rendered by Graphviz `dot`, the one diagram format that needs a program.

Graphviz comes from the Debian package `graphviz`; where it is missing the error says so, and the
Mermaid and DOT formats (pure text) still work.
"""

from __future__ import annotations

import shutil
import subprocess

from tollgate.service.exceptions import DiagramUnavailable

MISSING = ("Graphviz is not installed: install the Debian package `graphviz` (apt-get install "
           "graphviz) or use --format dot/mermaid.")
TIMEOUT_SECONDS = 20.0


def render_svg(dot_text: str, *, dot: str = "dot", timeout: float = TIMEOUT_SECONDS) -> bytes:
    """SVG bytes for `dot_text`; `DiagramUnavailable` when `dot` is missing, fails or hangs."""
    executable = shutil.which(dot)
    if executable is None:
        raise DiagramUnavailable(MISSING)
    try:
        result = subprocess.run([executable, "-Tsvg"], input=dot_text.encode("utf-8"),
                                capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise DiagramUnavailable(f"Graphviz `dot` did not finish within {timeout:g} seconds.") from None
    except OSError as error:
        raise DiagramUnavailable(f"Graphviz `dot` could not be started ({error.strerror}); "
                                 f"{MISSING}") from None
    if result.returncode != 0:
        detail = result.stderr.decode("utf-8", "replace").strip() or "no message"
        raise DiagramUnavailable(f"Graphviz `dot` failed with exit code {result.returncode}: "
                                 f"{detail}")
    return result.stdout
