"""The local generator on tiny random models saved as Hugging Face folders, and the LangChain one.

GPT-2 (no RoPE) answers with a plain full prefill exactly as transformers' own greedy ``generate``
does, and asking it for chunk-cache reuse is refused from its config before any model loads.
Qwen2 and Mistral layers go through the same reuse mechanics as Llama: recomputing every token
reproduces a full prefill, and the in-place blockwise recompute equals the dense reference.
"""

from __future__ import annotations

import pytest
import torch
import typer
from support import ATOL, three_chunk_setup
from typer.testing import CliRunner

from compression.kv.assemble import assemble, cache_tensors
from compression.kv.generate import full_prefill, recompute, recompute_dense
from compression.kv.recovery import make_recovery
from generation.base import ReuseOptions
from generation.local import LocalGenerator

CONTEXTS = ["the quick brown fox jumps over the lazy dog.", "engine oil dilution was measured in 2011."]


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory, tiny_tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tiny_tokenizer), n_positions=512, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=0, eos_token_id=None)
    folder = tmp_path_factory.mktemp("gpt2")
    GPT2LMHeadModel(config).eval().save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def test_gpt2_answers_without_reuse_like_transformers_generate(gpt2_dir, one_torch_thread):
    from transformers import AutoModelForCausalLM

    local = LocalGenerator(str(gpt2_dir), dtype="float32")
    answer = local.answer(CONTEXTS, "what jumps?", reuse=ReuseOptions("none"), max_new_tokens=7)
    prompt = local.engine().prompt(CONTEXTS, "what jumps?")
    reference = AutoModelForCausalLM.from_pretrained(gpt2_dir).eval()
    expected = reference.generate(torch.tensor([prompt.all_ids]), max_new_tokens=7, do_sample=False,
                                  pad_token_id=0)[0, len(prompt.all_ids):].tolist()
    assert answer.completion_tokens == len(expected) == 7
    assert answer.text == local.engine().lm.tokenizer.decode(expected, skip_special_tokens=True).strip()
    assert answer.prompt_tokens == len(prompt.all_ids) and answer.reused_tokens == 0 and not answer.chunk_caches_reused
    assert 0 < answer.ttft_s <= answer.total_s
    identity = local.identity()
    assert identity["model"].startswith(f"{gpt2_dir.resolve()}@") and (identity["dtype"], identity["device"]) == ("float32", "cpu")


def test_gpt2_reuse_is_refused_from_its_config(gpt2_dir):
    with pytest.raises(ValueError, match=r"handles llama, qwen2, mistral models only and .* is 'gpt2'; use --kv-reuse none"):
        LocalGenerator(str(gpt2_dir)).preflight(ReuseOptions("naive"))


@pytest.fixture
def ask_app():
    from flows import cli_ask

    app = typer.Typer()
    cli_ask.register(app)
    app.command("noop")(lambda: None)
    return app


def test_ask_refuses_reuse_for_gpt2_in_one_line_before_any_model_loads(ask_app, gpt2_dir, tmp_path, monkeypatch):
    import compression.lm

    def no_loading(*args):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(compression.lm, "_load", no_loading)
    result = CliRunner().invoke(ask_app, ["ask", "why?", "--index", str(tmp_path), "--lm", str(gpt2_dir), "--kv-reuse", "naive"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: chunk-cache reuse handles llama, qwen2, mistral models only")
    assert "'gpt2'; use --kv-reuse none" in lines[0]


@pytest.mark.parametrize("flags,message", [
    (["--llm-url", "http://127.0.0.1:9/v1"], "--llm-url needs --llm-model NAME"),
    (["--llm-model", "m"], "--llm-model and --llm-api-key-env go with --llm-url"),
    (["--llm-url", "http://127.0.0.1:9/v1", "--llm-model", "m", "--kv-reuse", "naive"], "not available with --llm-url"),
    (["--dtype", "float8"], "unknown --dtype 'float8'; valid: auto, float32, bfloat16, float16"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--device", "tpu"], "unknown device 'tpu'; valid: cpu, cuda[:N], mps"),
])
def test_ask_refuses_bad_llm_options(ask_app, tmp_path, flags, message):
    result = CliRunner().invoke(ask_app, ["ask", "why?", "--index", str(tmp_path), *flags])
    assert result.exit_code == 2 and message in result.output, result.output


def tiny_qwen2(seed: int = 0, **overrides):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512, rope_theta=10000.0, tie_word_embeddings=True)
    model = Qwen2ForCausalLM(Qwen2Config(**{**config, **overrides})).eval()
    with torch.no_grad():  # the q/k/v biases start at zero: make them count
        for layer in model.model.layers:
            for projection in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                projection.bias.normal_(0, 0.5)
    return model


def tiny_mistral(seed: int = 0, **overrides):
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(seed)
    config = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512, rope_theta=10000.0, sliding_window=None)
    return MistralForCausalLM(MistralConfig(**{**config, **overrides})).eval()


@pytest.mark.parametrize("factory", [tiny_qwen2, tiny_mistral], ids=["qwen2", "mistral"])
def test_reuse_mechanics_hold_for_qwen2_and_mistral(factory, one_torch_thread):
    model, prompt, prefix, chunks = three_chunk_setup(factory)
    reference_cache, reference = full_prefill(model, prompt)
    cache = assemble(model, prefix, chunks)
    selected = make_recovery("blend", r=1.0).select(model, cache, prompt)
    torch.testing.assert_close(recompute(model, cache, prompt, selected), reference, atol=ATOL, rtol=0)
    for mine, theirs in zip(cache_tensors(cache), cache_tensors(reference_cache)):
        torch.testing.assert_close(mine, theirs, atol=ATOL, rtol=0)
    some = [7, 9, 15, 16, 31]
    fast, dense = assemble(model, prefix, chunks), assemble(model, prefix, chunks)
    torch.testing.assert_close(recompute(model, fast, prompt, some, block=3), recompute_dense(model, dense, prompt, some),
                               atol=ATOL, rtol=0)
    naive = recompute(model, assemble(model, prefix, chunks), prompt, [])
    assert (naive - reference).abs().max() > 1e-3  # not vacuous: without recovery the answer's logits differ


def test_qwen2_folder_is_offered_reuse_and_yarn_is_refused(tmp_path):
    from transformers import Qwen2Config

    Qwen2Config(vocab_size=256, hidden_size=64, num_hidden_layers=1, num_attention_heads=4).save_pretrained(tmp_path / "q")
    LocalGenerator(str(tmp_path / "q")).preflight(ReuseOptions("blend"))
    Qwen2Config(vocab_size=256, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128}).save_pretrained(tmp_path / "y")
    with pytest.raises(ValueError, match="RoPE type 'yarn' is not supported"):
        LocalGenerator(str(tmp_path / "y")).preflight(ReuseOptions("blend"))


def test_langchain_chat_model_streams_an_answer():
    from langchain_core.language_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage

    from generation.langchain import LangChainGenerator

    chat = GenericFakeChatModel(messages=iter([AIMessage(content="Paris is the capital.")]))
    answer = LangChainGenerator(chat).answer(CONTEXTS, "capital?")
    assert answer.text == "Paris is the capital." and 0 < answer.ttft_s <= answer.total_s and not answer.chunk_caches_reused
    with pytest.raises(ValueError, match="not available for a LangChain chat model"):
        LangChainGenerator(chat).preflight(ReuseOptions("naive"))



@pytest.mark.slow
@pytest.mark.prefect
@pytest.mark.real_model
def test_ask_answers_with_a_gpt2_folder_without_reuse(prefect_harness, ask_app, gpt2_dir, tmp_path):
    """Through the CLI and the flow: real MiniLM retrieval, the GPT-2 folder answers with a full prefill,
    by default too (reuse is only the default where the model supports it)."""
    import json

    from retrieval.chunkers import make_chunker
    from retrieval.encoder import load_encoder
    from retrieval.indexing import index_paths

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "fox.txt").write_text(CONTEXTS[0] + "\n\n" + CONTEXTS[1] + "\n", encoding="utf-8")
    index_paths([docs], tmp_path / "index", make_chunker("token", chunk_size=32), load_encoder())
    for flags in (["--kv-reuse", "none"], []):
        done = CliRunner().invoke(ask_app, ["ask", "what jumps?", "--index", str(tmp_path / "index"), "--lm", str(gpt2_dir),
                                            "-k", "1", "--max-new-tokens", "5", "--json", *flags])
        assert done.exit_code == 0, done.output
        result = json.loads(done.output[done.output.index("{"):])
        assert result["kv_reuse"] == "none" and result["reused_tokens"] == 0 and result["completion_tokens"] == 5
        assert result["tokens_sent"] == result["prefilled_tokens"] > 0 and result["generator"]["backend"] == "local"
    assert not (tmp_path / "index" / "kv-cache").exists()  # no chunk cache was computed
