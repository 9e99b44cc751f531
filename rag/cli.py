"""The `rag` command. It reaches into api/, ingest/ and eval/ only inside their subcommands."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from rag.errors import InvalidInput, RagError
from rag.settings import Settings

app = typer.Typer(help="Retrieval-augmented question answering over your own documents.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
console = Console()
SAMPLES = Path(__file__).parent / "samples"


def _service(generator: bool = True):  # type: ignore[no-untyped-def]
    from rag.service import RagService

    service = RagService(Settings())
    with console.status("loading models and index..."):
        service.load(generator=generator, follow=generator)  # `rag ingest` only writes
    return service


def expand(paths: list[Path]) -> list[tuple[Path, str]]:
    """Files given, and every file under the folders given, sorted, with their names.

    One argument: a file is named by its own name, files under a folder by their path under
    it (`rag ingest docs` names `docs/faq.txt` faq.txt). Several: every file by its path under
    the arguments' common parent (`rag ingest a/ b/` names a/README.md and b/README.md), since
    a second file of one name would replace the first as its new version. Hidden files are
    skipped; a name given twice is refused before anything is ingested.
    """
    given = list(dict.fromkeys(Path(os.path.abspath(p)) for p in paths))
    if len(given) == 1:
        base = given[0] if given[0].is_dir() else given[0].parent
    else:
        base = Path(os.path.commonpath(given))
        if not base.is_dir():
            base = base.parent
    files: list[tuple[Path, str]] = []
    for path in given:
        inside = sorted(path.rglob("*")) if path.is_dir() else [path]
        files.extend((p, p.relative_to(base).as_posix()) for p in inside
                     if not path.is_dir() or p.is_file()
                     and not any(part.startswith(".") for part in p.relative_to(path).parts))
    _refuse_duplicates(files)
    return files


def _refuse_duplicates(files: list[tuple[Path, str]]) -> None:
    seen: dict[str, Path] = {}
    for path, name in files:
        if name in seen:
            raise InvalidInput(
                f"{name} would be ingested twice ({seen[name]} and {path}): the second would "
                "replace the first as its new version.",
                "Give each file once (a folder already includes its files).")
        seen[name] = path


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders to ingest.")],
    collection: Annotated[str, typer.Option(help="Collection to put them in.")] = "default",
) -> None:
    """Parse, chunk, embed and index files and folders. One folder: its files are named by
    their path under it; several arguments: by their path under the arguments' common folder."""
    logging.basicConfig(level=logging.WARNING)
    try:
        files = expand(paths)
    except RagError as exc:
        console.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from exc
    service = _service(generator=False)
    failed = 0
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("ingesting", total=len(files))
        for path, name in files:
            bar.update(task, description=f"{path.name[:40]}")
            try:
                doc = service.documents.ingest_file(path, name, collection=collection)
                bar.console.print(f"[green]ok[/] {path} ({doc.chunk_count} chunks)")
            except RagError as exc:
                failed += 1
                bar.console.print(f"[red]failed[/] {path}: {exc}")
            bar.advance(task)
    console.print(f"{len(files) - failed} ingested, {failed} failed; "
                  f"{service.documents.searchable_count()} chunks searchable")
    raise typer.Exit(1 if failed and failed == len(files) else 0)


@app.command()
def sync(
    folder: Annotated[Path, typer.Argument(help="The folder to mirror.")],
    collection: Annotated[str | None, typer.Option(
        help="The collection that mirrors it (default: the folder's name, so rag sync "
             "~/notes mirrors into notes).", show_default=False)] = None,
    watch: Annotated[bool, typer.Option(help="Keep syncing as files change (Ctrl-C stops).")
                     ] = False,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print each pass's counts as a JSON line on stdout, the last line "
                       "whatever happens (messages go to stderr).")] = False,
    delete_many: Annotated[bool, typer.Option(
        help="Allow a pass to remove more than half of the collection's documents, or all "
             "of them (refused otherwise: an empty or unmounted folder).")] = False,
) -> None:
    """Make a collection mirror a folder: new files added, changed ones new versions, removed
    ones deleted, unchanged ones left alone; hidden and temporary files are not synced.
    Ctrl-C stops after the current file. Exits 1 when a file failed (without --watch), 2 on
    bad input, 130 when stopped before the pass was done."""
    from ingest.sync_command import SyncOptions, sync_command

    logging.basicConfig(level=logging.WARNING)
    options = SyncOptions(folder, collection, watch, as_json, delete_many)
    out = Console(stderr=True) if as_json else console
    raise typer.Exit(sync_command(lambda: _service(generator=False).documents, options, out))


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question.")],
    top_k: Annotated[int | None, typer.Option(help="Sources to retrieve.")] = None,
    collection: Annotated[str | None, typer.Option(help="Only this collection.")] = None,
) -> None:
    """Answer a question from the indexed documents, with citations and timings."""
    from rag.ask.service import AskRequest

    service = _service()
    try:
        answer = service.asking.ask(AskRequest(question, top_k, collection))
    except RagError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    if answer.short_answer is not None:
        console.print(answer.short_answer.text, style="bold", markup=False)
    console.print(answer.text, markup=False)
    labels = {"generated": f"checked: {answer.groundedness:.0%} of its sentences supported",
              "quote": "a quote: the generated answer was not supported by the sources",
              "abstained": "no answer"}
    console.print(f"[dim]({labels[answer.mode]})[/]")
    if answer.mode == "generated" and answer.groundedness < 1.0:
        console.print("generated: " + answer.generated_text, style="dim", markup=False)
    for q in answer.evidence:
        if q.supports is None and not (answer.mode == "quote" and q is answer.evidence[0]):
            continue
        page = f", page {q.page}" if q.page else ""
        console.print(f"\n[green]evidence[/] [{q.source}] {q.filename}{page} "
                      f"(chars {q.start}-{q.end}):")
        console.print("    " + " ".join(q.text.split()), markup=False)
    for c in answer.citations:
        page = f", page {c.page}" if c.page else ""
        console.print(f"\n[bold][{c.number}][/] {c.filename}{page} (chars {c.start}-{c.end})")
        console.print("    " + " ".join(c.text.split())[:400], markup=False)
    t = answer.timings
    console.print(f"\nretrieve {t.retrieve_ms:.0f} ms, evidence {t.evidence_ms:.0f} ms, "
                  f"prompt {t.prompt_ms:.0f} ms, check {t.check_ms:.0f} ms, "
                  f"first token {t.first_token_ms:.0f} ms, first checked sentence "
                  f"{t.first_sentence_ms:.0f} ms, total {t.total_ms:.0f} ms; "
                  f"{answer.usage.prompt_tokens} prompt + {answer.usage.completion_tokens} "
                  f"answer tokens{' (cached)' if answer.cached else ''}")


@app.command()
def reindex(
    reembed: Annotated[bool, typer.Option(
        help="Re-parse and re-embed every upload (needed after changing the model).")] = False,
) -> None:
    """Rebuild the FAISS index from the chunk store (or from the uploads with --reembed)."""
    from rag.service import RagService

    service = RagService(Settings())
    with console.status("re-indexing..."):
        service.load(generator=False, fresh_index=reembed)
        done, failed = service.documents.reindex(reembed=reembed)
    console.print(f"{done} documents indexed, {len(failed)} failed; "
                  f"{service.documents.searchable_count()} chunks searchable")
    raise typer.Exit(1 if failed else 0)


@app.command()
def serve(
    sample: Annotated[bool, typer.Option(help="Ingest the shipped sample corpus first.")] = False,
    host: Annotated[str | None, typer.Option(help="Bind address.")] = None,
    port: Annotated[int | None, typer.Option(help="Port.")] = None,
) -> None:
    """Run the API (embedded mode runs ingestion in-process too)."""
    import uvicorn

    from api.app import create_app, server_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = Settings()
        updates = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
        settings = settings.model_copy(update=updates)
        application = create_app(settings, sample_dir=SAMPLES if sample else None)
    except RagError as exc:  # e.g. open mode on a non-loopback address
        console.print(f"[red]error:[/] {exc}", markup=True, highlight=False)
        raise typer.Exit(2) from exc
    uvicorn.Server(server_config(application, settings)).run()


keys_app = typer.Typer(help="Make API keys for RAG_API_KEYS_FILE.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


@keys_app.command("new")
def new_key(
    scopes: Annotated[str, typer.Option(help="Its scopes, comma-separated: ask, ingest, admin."
                                        )] = "ask",
    tenant: Annotated[str, typer.Option(help="Its tenant (`*`: the operator, every tenant).")
                      ] = "default",
    groups: Annotated[str, typer.Option(help="The groups it reads, comma-separated.")] = "",
    name: Annotated[str, typer.Option(help="A label for people (not secret).")] = "",
    as_json: Annotated[bool, typer.Option(
        "--json", help='Print {"key": ..., "entry": ...} as one JSON line.')] = False,
) -> None:
    """Make a random key: print it once, and its entry for RAG_API_KEYS_FILE (which keeps only
    the key's SHA-256). Give the key to its user; add the entry to the file's list."""
    import json
    import secrets

    from api.keys import digest, parse_entry

    try:
        spec = parse_entry({"scopes": _names(scopes), "tenant": tenant,
                            "groups": _names(groups), "name": name}, "the new key", "")
    except RagError as exc:
        console.print(f"[red]error:[/] {exc}", markup=True, highlight=False)
        raise typer.Exit(2) from exc
    key = secrets.token_urlsafe(32)
    entry = spec.file_entry(digest(key).hex())
    if as_json:
        typer.echo(json.dumps({"key": key, "entry": entry}))
        return
    typer.echo(f"key (shown only now; send it as Authorization: Bearer <key>):\n{key}\n")
    typer.echo(f"entry for RAG_API_KEYS_FILE (add it to the file's list):\n{json.dumps(entry)}")


PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


@app.command(context_settings=PASS_THROUGH, add_help_option=False)
def worker(ctx: typer.Context) -> None:
    """Consume ingestion jobs from Redis (distributed mode). `rag worker --help` for options."""
    from ingest.cli import worker_app

    worker_app(ctx.args, prog_name="rag worker")


@app.command(name="eval", context_settings=PASS_THROUGH, add_help_option=False)
def evaluate(ctx: typer.Context) -> None:
    """Run and compare evaluation suites: `rag eval run SUITE`, `rag eval compare A B`."""
    from eval.cli import eval_app

    eval_app(ctx.args, prog_name="rag eval")


@app.command(context_settings=PASS_THROUGH, add_help_option=False)
def bench(ctx: typer.Context) -> None:
    """Measure ingest, retrieval and ask speed as ratios to the raw libraries; writes JSON."""
    from eval.cli import bench_app

    bench_app(ctx.args, prog_name="rag bench")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
