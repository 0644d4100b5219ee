"""A real PDF that is slow to parse and mask: every page of the 20 SEC 10-Q filings in one
document (1,037 pages, 11 MB), built with pypdfium2. Parsing it takes seconds of CPU, masking
it tens of seconds: far over the sub-second time budgets the tests set."""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

from rag_platform_tests.conftest import SEC_DOCS


@lru_cache(maxsize=1)
def all_filings_pdf() -> bytes:
    """The bytes of one PDF holding every page of every filing in ``SEC_DOCS``."""
    import pypdfium2 as pdfium

    merged = pdfium.PdfDocument.new()
    for path in sorted(SEC_DOCS.glob("*.pdf")):
        merged.import_pages(pdfium.PdfDocument(path.read_bytes()))
    out = io.BytesIO()
    merged.save(out)
    return out.getvalue()


def write_all_filings_pdf(folder: Path, name: str = "all-filings.pdf") -> Path:
    """Writes :func:`all_filings_pdf` to ``folder/name``."""
    path = folder / name
    path.write_bytes(all_filings_pdf())
    return path
