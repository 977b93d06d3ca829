"""A zoo of tiny random causal LMs, one per model family the trainer accepts, built in-process.

Each entry builds a fresh model from the family's real transformers config class (2 layers,
hidden 64, 4 query heads over 2 KV heads where the family has GQA, vocabulary 512), with a fixed
seed, fp32 weights and no KV cache; the whole zoo builds in a few seconds. The parity tests of
tests/test_zoo_parity.py run over it: every architecture in trainer_core.loss.TRAINED_ROWS_PATHS
and trainer_core.lean_layers.LEAN_LAYER_ARCHITECTURES must have an entry here.

The weights are drawn wider than the families' own initialisation (INIT_STD instead of 0.02) so
the logits spread over several units: with 0.02 every logit is near 0, the softmax is uniform and
a soft-capping or logit scale that a path forgets would change almost nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

VOCAB = 512
HIDDEN = 64
INTERMEDIATE = 128
LAYERS = 2
HEADS = 4
KV_HEADS = 2
HEAD_DIM = HIDDEN // HEADS
INIT_STD = 0.2
PAD_TOKEN_ID = 0
SEED = 1234

# Settings every family shares (names as the config classes spell them).
COMMON: dict[str, Any] = dict(
    vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
    num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=256,
    initializer_range=INIT_STD, pad_token_id=PAD_TOKEN_ID, bos_token_id=1, eos_token_id=2, use_cache=False,
)


def _config(class_name: str, **overrides: Any) -> Any:
    import transformers

    return getattr(transformers, class_name)(**{**COMMON, **overrides})


def _qwen2() -> Any:  # Qwen2.5: bias on q/k/v, GQA, untied head (7B and up)
    return _config("Qwen2Config", tie_word_embeddings=False, rms_norm_eps=1e-6)


def _qwen3() -> Any:  # per-head q/k RMSNorm, explicit head_dim
    return _config("Qwen3Config", head_dim=HEAD_DIM, tie_word_embeddings=False, rms_norm_eps=1e-6)


def _qwen2_moe() -> Any:  # routed experts + a gated shared expert (a SwiGLU block)
    return _config("Qwen2MoeConfig", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                   shared_expert_intermediate_size=64, decoder_sparse_step=1, mlp_only_layers=[],
                   output_router_logits=False, tie_word_embeddings=False)


def _qwen3_moe() -> Any:  # routed experts only, normalised top-k
    return _config("Qwen3MoeConfig", head_dim=HEAD_DIM, num_experts=4, num_experts_per_tok=2,
                   moe_intermediate_size=32, decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=True,
                   output_router_logits=False, tie_word_embeddings=False)


def _llama3() -> Any:  # Llama 3.x: llama3 rope scaling, untied head
    return _config("LlamaConfig", tie_word_embeddings=False, rms_norm_eps=1e-5,
                   rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                    "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": 64})


def _smollm2() -> Any:  # SmolLM2: a llama with the head tied to the embeddings
    return _config("LlamaConfig", tie_word_embeddings=True, rms_norm_eps=1e-5)


def _mistral() -> Any:
    return _config("MistralConfig", head_dim=HEAD_DIM, sliding_window=None, tie_word_embeddings=False)


def _gemma2() -> Any:  # logits soft-capped after the head (30 in the real models), tied head
    return _config("Gemma2Config", head_dim=HEAD_DIM, final_logit_softcapping=4.0, attn_logit_softcapping=50.0,
                   query_pre_attn_scalar=HEAD_DIM, sliding_window=8, tie_word_embeddings=True)


def _gemma3_text() -> Any:  # Gemma 3 text (1B-style): no final soft-capping, q/k norms, tied head
    return _config("Gemma3TextConfig", head_dim=HEAD_DIM, query_pre_attn_scalar=HEAD_DIM, sliding_window=8,
                   layer_types=["sliding_attention", "full_attention"], tie_word_embeddings=True)


def _gemma3_text_softcapped() -> Any:  # the same with Gemma 2's final soft-capping switched on
    config = _gemma3_text()
    config.final_logit_softcapping = 4.0
    return config


def _qwen3_moe_router_aux() -> Any:  # the router's auxiliary loss added to the loss
    config = _qwen3_moe()
    config.output_router_logits = True
    config.router_aux_loss_coef = 0.1
    return config


def _glm4() -> Any:  # GLM-4-0414: fused gate_up_proj, partial rotary, extra post-norms
    return _config("Glm4Config", head_dim=HEAD_DIM, partial_rotary_factor=0.5, attention_bias=True,
                   tie_word_embeddings=False)


def _phi3() -> Any:  # Phi-3/3.5/4-mini: fused qkv_proj and gate_up_proj
    return _config("Phi3Config", tie_word_embeddings=False, sliding_window=None)


def _granite() -> Any:  # Granite 3: logits divided by logits_scaling, muP-style multipliers
    return _config("GraniteConfig", logits_scaling=8.0, embedding_multiplier=12.0, residual_multiplier=0.22,
                   attention_multiplier=1.0 / HEAD_DIM, tie_word_embeddings=True)


def _cohere() -> Any:  # NOT on the allow-lists: logits multiplied by logit_scale, LayerNorm
    return _config("CohereConfig", logit_scale=0.25, tie_word_embeddings=True)


# name -> (config builder, model class name)
SPECS: dict[str, tuple[Callable[[], Any], str]] = {
    "qwen2.5": (_qwen2, "Qwen2ForCausalLM"),
    "qwen3": (_qwen3, "Qwen3ForCausalLM"),
    "qwen2-moe": (_qwen2_moe, "Qwen2MoeForCausalLM"),
    "qwen3-moe": (_qwen3_moe, "Qwen3MoeForCausalLM"),
    "llama3": (_llama3, "LlamaForCausalLM"),
    "smollm2": (_smollm2, "LlamaForCausalLM"),
    "mistral": (_mistral, "MistralForCausalLM"),
    "gemma2": (_gemma2, "Gemma2ForCausalLM"),
    "gemma3-text": (_gemma3_text, "Gemma3ForCausalLM"),
    "gemma3-text+softcap": (_gemma3_text_softcapped, "Gemma3ForCausalLM"),
    "qwen3-moe+router-aux": (_qwen3_moe_router_aux, "Qwen3MoeForCausalLM"),
    "glm4": (_glm4, "Glm4ForCausalLM"),
    "phi3": (_phi3, "Phi3ForCausalLM"),
    "granite": (_granite, "GraniteForCausalLM"),
    "cohere": (_cohere, "CohereForCausalLM"),
}


def build(name: str, seed: int = SEED) -> Any:
    """A fresh fp32 model of the family `name`, the same weights for the same seed, in train mode."""
    import torch
    import transformers

    make_config, class_name = SPECS[name]
    config = make_config()
    torch.manual_seed(seed)
    model = getattr(transformers, class_name)(config)
    model.config.use_cache = False
    return model.float().train()


def _builder(name: str) -> Callable[[], Any]:
    def make() -> Any:
        return build(name)

    make.__name__ = "build_" + "".join(c if c.isalnum() else "_" for c in name)
    return make


FAMILIES: dict[str, Callable[[], Any]] = {name: _builder(name) for name in SPECS}


def model_type(name: str) -> str:
    """config.model_type of the family, without building the model."""
    return SPECS[name][0]().model_type
