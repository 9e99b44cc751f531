"""Documents in: `detection` (what a file is, from its bytes), `parsing` (unstructured, per
kind), `chunking` (token windows with exact offsets), `sentences` (spans for evidence),
`processing` (parse -> chunk -> embed -> store for one file) and `indexer` (DocumentIndexer:
the one owner of document state: ingest, process, delete, reindex)."""
