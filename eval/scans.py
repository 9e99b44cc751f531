"""Scanned copies of text: pages rendered at 150 dpi with noise and a slight rotation.

For measuring OCR: `render_pages` draws paragraphs onto letter-size pages as a scanner would
return them (grey speckle, a tilt of about a degree); `scan_suite` writes a copy of a suite
whose documents are such scans (one PDF without a text layer, or one PNG per page) and whose
questions are the same, so a suite's figures on the text and the scanned copy compare directly:

    python -m eval.scans make eval/suites/sample runs/sample-scanned
    rag eval run runs/sample-scanned --retrieval-only
"""

from __future__ import annotations

import argparse
import json
import random
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL.Image import Image
    from PIL.ImageFont import FreeTypeFont

DPI = 150
PAGE_INCHES = (8.5, 11.0)
MARGIN = 110  # pixels at DPI
FONT_PT = 11
FONTS = ("/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf",
         "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


def font(points: int = FONT_PT) -> FreeTypeFont:
    """A TrueType font at `points` for DPI: DejaVu (Debian's fonts-dejavu-core), else the one
    Pillow carries."""
    from PIL import ImageFont

    pixels = round(points * DPI / 72)
    for path in FONTS:
        if Path(path).is_file():
            return ImageFont.truetype(path, pixels)
    return ImageFont.load_default(pixels)  # type: ignore[return-value]  # Pillow's own TrueType


def render_pages(paragraphs: Sequence[str], seed: int = 0, noise: float = 0.01,
                 max_degrees: float = 1.2,
                 inches: tuple[float, float] = PAGE_INCHES) -> list[Image]:
    """Greyscale page images of the paragraphs (a blank line between them), as scanned:
    `inches` wide and high at DPI, a share `noise` of pixels speckled, tilted up to
    `max_degrees`."""
    return [page for page, _ in render_text_pages(paragraphs, seed, noise, max_degrees, inches)]


def render_text_pages(paragraphs: Sequence[str], seed: int = 0, noise: float = 0.01,
                      max_degrees: float = 1.2, inches: tuple[float, float] = PAGE_INCHES,
                      ) -> list[tuple[Image, str]]:
    """`render_pages` with the text drawn on each page (its lines, one a line)."""
    rng = random.Random(seed)
    return [(scanned(page, rng, noise, max_degrees), text)
            for page, text in _clean_pages(paragraphs, inches)]


def _clean_pages(paragraphs: Sequence[str], inches: tuple[float, float]
                 ) -> Iterator[tuple[Image, str]]:
    from PIL import Image as PILImage
    from PIL import ImageDraw

    size = (round(inches[0] * DPI), round(inches[1] * DPI))
    face = font()
    line_height = round(face.size * 1.35)
    chars = int((size[0] - 2 * MARGIN) / face.getlength("abcdefghij klmnopqrst") * 21)
    lines: list[str] = []
    for paragraph in paragraphs:
        for raw in paragraph.splitlines():
            lines.extend(textwrap.wrap(raw, chars) or [""])
        lines.append("")
    per_page = (size[1] - 2 * MARGIN) // line_height
    for first in range(0, len(lines), per_page):
        page = PILImage.new("L", size, 255)
        draw = ImageDraw.Draw(page)
        on_page = lines[first:first + per_page]
        for n, line in enumerate(on_page):
            draw.text((MARGIN, MARGIN + n * line_height), line, fill=20, font=face)
        yield page, "\n".join(on_page)


def scanned(page: Image, rng: random.Random, noise: float, max_degrees: float) -> Image:
    """The page tilted by up to `max_degrees` with a share `noise` of its pixels speckled."""
    import numpy as np
    from PIL import Image as PILImage

    degrees = rng.uniform(-max_degrees, max_degrees)
    tilted = page.rotate(degrees, resample=PILImage.Resampling.BICUBIC, fillcolor=255)
    pixels = np.asarray(tilted, dtype=np.int16)
    generator = np.random.default_rng(rng.randrange(1 << 30))
    pixels = pixels + generator.normal(0, 12, pixels.shape).astype(np.int16)  # paper grain
    speckle = generator.random(pixels.shape) < noise
    pixels[speckle] = generator.integers(0, 256, int(speckle.sum()))
    return PILImage.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="L")


def save_pdf(pages: Sequence[Image], path: Path) -> Path:
    """The pages as one PDF of images (no text layer), at DPI."""
    pages[0].save(path, "PDF", save_all=True, append_images=list(pages[1:]), resolution=DPI)
    return path


def character_accuracy(reference: str, read: str) -> float:
    """1 - Levenshtein distance / reference length, whitespace runs counted as one space."""
    from rapidfuzz.distance import Levenshtein

    ref, got = " ".join(reference.split()), " ".join(read.split())
    return max(0.0, 1 - Levenshtein.distance(ref, got) / max(1, len(ref)))


# ---------------------------------------------------------------------------------------------
# A scanned copy of a suite


def document_paragraphs(path: Path) -> list[str]:
    """The document's text as the engine parses it, one paragraph per element."""
    from rag.documents.parsing import parse
    from rag.settings import Settings

    return [element.text for element in parse(path, path.name, Settings())]


def scan_suite(suite_dir: Path, out: Path, image_format: str = "pdf") -> dict[str, str]:
    """Write `out`: a suite whose documents are scans of `suite_dir`'s and whose questions are
    the same (relevant documents renamed); returns old key -> new key."""
    from eval.suites import load_suite

    suite = load_suite(suite_dir)
    corpus = out / "documents"
    corpus.mkdir(parents=True, exist_ok=True)
    renamed: dict[str, str] = {}
    for n, doc in enumerate(suite.corpus):
        if doc.path is None:
            raise ValueError(f"{doc.key}: only suites whose corpus is files can be scanned")
        pages = render_pages(document_paragraphs(doc.path), seed=n)
        renamed[doc.key] = _write_scan(pages, corpus, doc.key, image_format)
    spec = json.loads((suite_dir / "suite.json").read_text(encoding="utf-8"))
    questions = suite_dir / spec["questions"]
    lines = [_renamed(json.loads(line), renamed)
             for line in questions.read_text(encoding="utf-8").splitlines() if line.strip()]
    (out / "questions.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines),
                                         encoding="utf-8")
    spec.update(name=f"{suite.name}-scanned", corpus="documents", questions="questions.jsonl",
                description=f"Scans ({DPI} dpi, noise, slight rotation) of {suite.name}'s "
                f"documents, made by eval/scans.py; the same questions.")
    (out / "suite.json").write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
    return renamed


def _write_scan(pages: Sequence[Image], folder: Path, key: str, image_format: str) -> str:
    if image_format == "pdf" or len(pages) > 1:
        name = f"{key}.pdf"
        save_pdf(pages, folder / name)
    else:
        name = f"{key}.png"
        pages[0].save(folder / name, dpi=(DPI, DPI))
    return name


def _renamed(item: dict[str, Any], renamed: dict[str, str]) -> dict[str, Any]:
    if "relevant" in item:
        item["relevant"] = [renamed.get(key, key) for key in item["relevant"]]
    for turn in item.get("turns", []):
        _renamed(turn, renamed)
    return item


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m eval.scans make SUITE OUT [--format pdf|png]`."""
    parser = argparse.ArgumentParser(prog="python -m eval.scans", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("make", help="write a scanned copy of a suite")
    make.add_argument("suite", type=Path)
    make.add_argument("out", type=Path)
    make.add_argument("--format", choices=("pdf", "png"), default="pdf",
                      help="png writes one-page documents as PNG (longer ones stay PDF)")
    args = parser.parse_args(argv)
    renamed = scan_suite(args.suite, args.out, args.format)
    print(f"{len(renamed)} documents scanned into {args.out}")


if __name__ == "__main__":
    main()
