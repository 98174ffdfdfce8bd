"""The monthly summary as a PDF: the HTML report laid out on A4 by WeasyPrint (on Pango), no browser.

The page layout is the HTML's own print CSS (`@page` and `@media print` in report.html.j2): the
overview on page 1, each process from a new page, charts and tables never cut across pages, the
month, the generation time and the page number in the footer. WeasyPrint is imported on the first
PDF asked for, so the service and the other formats never load it.
"""

import logging

QUIET = {"weasyprint": logging.ERROR, "weasyprint.progress": logging.WARNING}
"""WeasyPrint's own log levels: its progress lines, and its warnings about the CSS meant for browsers alone
(`fill` in the page's styles, the phone layout's `@media (max-width)`), say nothing to whoever runs a report."""


def render_pdf(html: str) -> bytes:
    """The PDF of the report's HTML (as `render_html` returns it). It fetches nothing: no protocol is
    allowed, so no file is read and no server called while it is laid out, whatever the HTML links."""
    for name, level in QUIET.items():  # before the import: it lays out its own stylesheets
        logging.getLogger(name).setLevel(level)
    from weasyprint import HTML, URLFetcher  # here: Pango and WeasyPrint cost a PDF, not every import

    pdf: bytes = HTML(string=html, url_fetcher=URLFetcher(allowed_protocols=())).write_pdf()
    return pdf
