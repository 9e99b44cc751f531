"""The `rag` command end to end: ingest a folder of mixed formats, then ask."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def make_folder(folder: Path) -> None:
    from docx import Document as Docx
    from fpdf import FPDF

    folder.mkdir()
    (folder / "notes.md").write_text("# Garden\n\nThe greenhouse tomatoes ripen in late July.")
    (folder / "page.html").write_text(
        "<html><body><h1>Museum</h1><p>The museum opens at 10:30 on Sundays.</p></body></html>")
    (folder / "prices.csv").write_text("item,price\nlantern,14 euros\ncompass,22 euros\n")
    doc = Docx()
    doc.add_heading("Fleet", level=1)
    doc.add_paragraph("The ferry Albatross carries 412 passengers across the strait.")
    doc.save(str(folder / "fleet.docx"))
    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("helvetica", size=12)
    pdf.multi_cell(0, 10, "The observatory telescope has a mirror of 2.4 metres.")
    pdf.add_page()
    pdf.multi_cell(0, 10, "Observing nights are every Thursday in winter.")
    pdf.output(str(folder / "observatory.pdf"))
    (folder / "broken.docx").write_bytes(b"PK\x03\x04 not really a zip")


def rag(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rag.cli", *args], env=env, text=True,
                          capture_output=True, timeout=300)


def test_ingest_folder_then_ask(tmp_path: Path, generator, models_dir: Path) -> None:  # type: ignore[no-untyped-def]
    make_folder(tmp_path / "docs")
    env = {**os.environ, "RAG_DATA_DIR": str(tmp_path / "data"),
           "RAG_CONVERTED_MODELS_DIR": str(models_dir), "COLUMNS": "200"}
    ingest = rag("ingest", str(tmp_path / "docs"), env=env)
    assert ingest.returncode == 0, ingest.stderr
    assert "5 ingested, 1 failed" in ingest.stdout
    assert "broken.docx" in ingest.stdout
    asked = rag("ask", "How large is the telescope mirror?", env=env)
    assert asked.returncode == 0, asked.stderr
    assert "[1] observatory.pdf, page 1" in asked.stdout
    assert "2.4 metres" in asked.stdout
    assert "first token" in asked.stdout and "retrieve" in asked.stdout


def test_ask_with_empty_question_fails_clearly(tmp_path: Path, generator, models_dir: Path) -> None:  # type: ignore[no-untyped-def]
    env = {**os.environ, "RAG_DATA_DIR": str(tmp_path / "data"),
           "RAG_CONVERTED_MODELS_DIR": str(models_dir)}
    asked = rag("ask", "   ", env=env)
    assert asked.returncode == 2 and "question is empty" in asked.stdout


def test_ingest_names_files_under_the_arguments_common_folder(tmp_path: Path) -> None:
    """Two README.md from two folders stay two documents (before, the second replaced the
    first); one folder's files keep their own names; a file given twice is refused before
    anything is loaded or ingested."""
    from rag.cli import SAMPLES, expand

    for sub in ("a", "b"):
        (tmp_path / sub / "deep").mkdir(parents=True)
        (tmp_path / sub / "README.md").write_text(f"About {sub}.")
        (tmp_path / sub / "deep" / "x.md").write_text(f"Deep in {sub}.")
    (tmp_path / "a" / ".hidden.md").write_text("never ingested")
    names = [name for _, name in expand([tmp_path / "a", tmp_path / "b"])]
    assert names == ["a/README.md", "a/deep/x.md", "b/README.md", "b/deep/x.md"]
    files = expand([tmp_path / "a" / "README.md", tmp_path / "b" / "README.md"])
    assert [name for _, name in files] == ["a/README.md", "b/README.md"]
    assert expand([tmp_path / "a" / "README.md"])[0][1] == "README.md"
    assert [n for _, n in expand([tmp_path / "a" / "deep" / "x.md", tmp_path / "a" / "README.md"])
            ] == ["deep/x.md", "README.md"]
    assert "faq.txt" in [name for _, name in expand([SAMPLES])]  # as the README says
    env = {**os.environ, "RAG_DATA_DIR": str(tmp_path / "data")}
    twice = rag("ingest", str(tmp_path / "a"), str(tmp_path / "a" / "README.md"), env=env)
    assert twice.returncode == 2 and "README.md would be ingested twice" in twice.stdout
    assert not (tmp_path / "data").exists()  # refused before the service was built


def test_sync_refuses_a_missing_folder(tmp_path: Path) -> None:
    env = {**os.environ, "RAG_DATA_DIR": str(tmp_path / "data")}
    missing = rag("sync", str(tmp_path / "nowhere"), "--json", env=env)
    assert missing.returncode == 2 and "is not a folder" in missing.stderr
    assert missing.stdout.splitlines()[-1].startswith('{"added": 0')
    helped = rag("sync", "--help", env={**env, "COLUMNS": "200"})
    assert "default: the folder's name" in helped.stdout and "--delete-many" in helped.stdout
