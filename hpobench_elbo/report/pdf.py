"""The PDF of a report: the same HTML, rendered by WeasyPrint (which runs no JavaScript)."""

from __future__ import annotations

import logging
from pathlib import Path

from hpobench_elbo.errors import UserError


def write_pdf(html: str, path: Path, base_url: Path | None = None) -> Path:
    """Render ``html`` to ``path`` with WeasyPrint; a missing WeasyPrint is a one-line error."""
    try:
        from weasyprint import HTML
    except ImportError as exc:  # also raised when its system libraries (pango) are missing
        raise UserError(f"PDF reports need WeasyPrint: pip install weasyprint ({exc})") from None
    logging.getLogger("fontTools").setLevel(logging.ERROR)  # font subsetting chatter, not report problems
    HTML(string=html, base_url=str(base_url or path.parent)).write_pdf(path)
    return path
