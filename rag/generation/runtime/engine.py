"""Where the local model runs: a process of its own (`process.py`, the default) or a
thread of this one (`ThreadEngine`). Both run the same `StepScheduler` on the same `Request`s.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from rag.generation.runtime.scheduler import Request, StepScheduler
from rag.settings import Settings


@dataclass(frozen=True)
class EngineOptions:
    """What the engine needs from the settings (it crosses to the child process pickled)."""

    model_dir: str
    device: str
    dtype: str
    skinny: Literal["auto", "on", "off"]
    max_batch: int
    max_waiting: int
    prefill_chunk: int
    temperature: float
    prefix_cache_tokens: int
    prompt_lookup: bool = True
    models_dir: str | None = None  # where an int8 copy is kept (runtime.int8)
    cpu_format: str = "float32"  # what dtype auto is on a CPU with native bfloat16

    @classmethod
    def from_settings(cls, settings: Settings, model_dir: Path) -> EngineOptions:
        return cls(
            model_dir=str(model_dir), device=settings.generator_device,
            dtype=settings.generator_dtype, skinny=settings.generator_skinny_linears,
            max_batch=settings.generator_max_batch, max_waiting=settings.generator_queue_size,
            prefill_chunk=settings.generator_prefill_chunk, temperature=settings.temperature,
            prefix_cache_tokens=settings.prefix_cache_tokens,
            prompt_lookup=settings.generator_prompt_lookup, models_dir=str(settings.models_dir),
            cpu_format=cpu_format(settings.generator_model))


def cpu_format(model: str) -> str:
    """What RAG_GENERATOR_DTYPE=auto runs `model` in on a CPU with native bfloat16: a packaged
    model's measured choice; float32 for any other (its answers in another format are
    unmeasured: SmolLM2's were worse in bfloat16, Qwen's were not)."""
    from rag.generation.packaged import PACKAGED

    packaged = PACKAGED.get(model)
    return "float32" if packaged is None else packaged.cpu_format


class Engine(Protocol):
    """Runs `Request`s on the local model."""

    info: dict[str, str]  # device, dtype, where it runs

    def start(self) -> None:
        """Load the model; raises ConfigError when it cannot."""
        ...

    def submit(self, request: Request) -> None:
        """Queue `request`; raises `Overloaded` when the queue is full."""
        ...

    def figures(self) -> dict[str, float]:
        """Scheduling and prefix-cache figures for /metrics."""
        ...

    def clear_prefix_cache(self) -> None: ...

    def close(self) -> None: ...


def build_engine(options: EngineOptions, in_process: bool) -> Engine:
    """The engine the settings ask for (not started)."""
    if in_process:
        return ThreadEngine(options)
    from rag.generation.runtime.process import EngineProcess

    return EngineProcess(options)


def make_scheduler(options: EngineOptions, *, start: bool, tuned: bool) -> StepScheduler:
    """Load the model and put a scheduler (not started with `start` False) over it; `tuned`
    (the engine process): skinny layers as options say, thread counts chosen by measuring."""
    import torch

    from rag.generation.model_files import load_causal_lm
    from rag.generation.runtime.kv_cache import PrefixCache
    from rag.generation.runtime.threads import ThreadChooser

    model = load_causal_lm(Path(options.model_dir), options.device, options.dtype,
                           options.skinny if tuned else "off",
                           Path(options.models_dir) if options.models_dir else None,
                           options.cpu_format)
    # in its own process the team spins: measure when one thread does better (threads.py)
    threads = ThreadChooser(torch.get_num_threads()) if (
        tuned and model.device.type == "cpu") else None
    eos = model.generation_config.eos_token_id
    eos_ids = set() if eos is None else {eos} if isinstance(eos, int) else set(eos)
    return StepScheduler(
        model, eos_ids, max_batch=options.max_batch, max_waiting=options.max_waiting,
        prefill_chunk=options.prefill_chunk, temperature=options.temperature,
        prefix_cache=PrefixCache(options.prefix_cache_tokens),
        prompt_lookup=options.prompt_lookup, threads=threads, start=start)


def describe(scheduler: StepScheduler, where: str) -> dict[str, str]:
    """The engine's `info`: device, dtype, where it runs, whether its layers are skinny."""
    from rag.generation.runtime.int8 import Int8Linear
    from rag.generation.runtime.linear import SkinnyLinear

    model = scheduler.model
    skinny = any(isinstance(m, SkinnyLinear) for m in model.modules())
    int8 = any(isinstance(m, Int8Linear) for m in model.modules())
    return {"device": str(model.device),
            "dtype": "int8" if int8 else str(model.dtype).removeprefix("torch."),
            "runs_in": where, "skinny_linears": str(skinny).lower()}


class ThreadEngine:
    """The scheduler in a thread of this process, on the stock layers (the earlier design; the
    benchmark's point of comparison, and for debugging in one process)."""

    def __init__(self, options: EngineOptions) -> None:
        self.options = options
        self.info: dict[str, str] = {}
        self.scheduler: StepScheduler | None = None

    def start(self) -> None:
        self.scheduler = make_scheduler(self.options, start=True, tuned=False)
        self.info = describe(self.scheduler, "thread")

    def submit(self, request: Request) -> None:
        self._running().submit(request)

    def figures(self) -> dict[str, float]:
        return self._running().figures()

    def clear_prefix_cache(self) -> None:
        self._running().clear_prefix_cache()

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.close()

    def _running(self) -> StepScheduler:
        assert self.scheduler is not None, "start() first (LocalGenerator.load does)"
        return self.scheduler
