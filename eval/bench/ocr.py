"""`rag bench` OCR: pages per second of our parse of scanned pages (Tesseract's reading made
into paragraphs and elements) beside raw `tesseract PAGE stdout` on the same images (both with
`ocr_threads` threads), and the character accuracy of our text on them.

The pages are the bench corpus's documents rendered by `eval.scans` (150 dpi, speckle, a tilt
of about a degree), saved as PNG; the first `PAGES` pages are read `options.rounds` times.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from eval.bench.measure import BenchOptions, Report

PAGES = 2


def bench_ocr(options: BenchOptions, tmp: Path, report: Report) -> dict[str, Any]:
    """Median pages/s of our parse and of raw `tesseract`, their ratio, and accuracy."""
    from rag.errors import ConfigError
    from rag.settings import Settings

    settings = Settings()
    try:
        from rag.documents.ocr import check_tesseract

        check_tesseract(settings)
    except ConfigError as exc:
        return {"skipped": exc.message}
    pages = scanned_pages(options.corpus, tmp / "ocr-pages", PAGES)
    ours, raw, accuracy = [], [], []
    for r in range(options.rounds):
        report("ocr", r, options.rounds)
        seconds, texts = _ours(pages, settings)
        ours.append(len(pages) / seconds)
        raw.append(len(pages) / _raw(pages, settings))
        accuracy = [_accuracy(reference, text) for (_, reference), text in zip(pages, texts,
                                                                               strict=True)]
    return {
        "pages": len(pages), "rounds": options.rounds, "pages_per_s_rounds": ours,
        "raw_pages_per_s_rounds": raw, "pages_per_s": statistics.median(ours),
        "raw_pages_per_s": statistics.median(raw),
        "ratio_to_raw": statistics.median(ours) / statistics.median(raw),
        "character_accuracy": statistics.mean(accuracy), "languages": settings.ocr_languages,
    }


def scanned_pages(corpus: Path, folder: Path, count: int) -> list[tuple[Path, str]]:
    """The first `count` scanned pages of the corpus's documents as PNGs, with their text."""
    from eval.scans import DPI, document_paragraphs, render_text_pages

    folder.mkdir(parents=True, exist_ok=True)
    pages: list[tuple[Path, str]] = []
    for n, path in enumerate(sorted(p for p in corpus.rglob("*") if p.is_file())):
        for image, text in render_text_pages(document_paragraphs(path), seed=n):
            if len(pages) == count:
                return pages
            page = folder / f"page-{len(pages)}.png"
            image.save(page, dpi=(DPI, DPI))
            pages.append((page, text))
    return pages


def _ours(pages: list[tuple[Path, str]], settings: Any) -> tuple[float, list[str]]:
    from rag.documents.chunking import SEPARATOR
    from rag.documents.parsing import parse

    started = time.perf_counter()
    texts = [SEPARATOR.join(e.text for e in parse(path, path.name, settings))
             for path, _ in pages]
    return time.perf_counter() - started, texts


def _raw(pages: list[tuple[Path, str]], settings: Any) -> float:
    """Seconds `tesseract PAGE stdout` takes on the pages, with the same ocr_threads."""
    env = {**os.environ, "OMP_THREAD_LIMIT": str(settings.ocr_threads)}
    started = time.perf_counter()
    for path, _ in pages:
        subprocess.run(["tesseract", str(path), "stdout", "-l", settings.ocr_languages],
                       env=env, capture_output=True, check=True)
    return time.perf_counter() - started


def _accuracy(reference: str, text: str) -> float:
    from eval.scans import character_accuracy

    return character_accuracy(reference, text)
