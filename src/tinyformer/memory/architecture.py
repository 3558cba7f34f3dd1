"""A model's memory-relevant architecture read from its Hugging Face ``config.json``: parameters, bytes of
weights per GPU (tensor and pipeline parallel, quantised checkpoints) and KV bytes per token (MHA, GQA, MLA,
hybrid linear-attention models).

The fields are the config's own names (``hidden_size``, ``num_key_value_heads``, ``n_routed_experts``,
``kv_lora_rank``, ``vision_config``...), so a pasted config.json works as it is. Dense, mixture-of-experts
(Qwen-MoE, DeepSeek-V2/V3, gpt-oss), multi-head latent attention and vision towers are counted; the byte
formulas themselves are :mod:`tinyformer.memory.formulas`'. :mod:`tinyformer.memory.startup` prices a vLLM
start-up with these numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tinyformer.memory.formulas import dtype_name, kv_bytes_per_token, mla_kv_bytes_per_token

# Bytes per weight of the quantised matrices, scales included, by checkpoint format (the int4 group formats
# call tinyformer.quantize's one formula with the config's group size).
MXFP4_BYTES = 0.5 + 1 / 32  # 4-bit values, one 8-bit exponent per 32 (OCP microscaling)
NF4_DOUBLE_QUANT_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit values, 8-bit absmax per 64, fp32 per 256 absmax
FP8_BYTES = 1.0  # + one fp32 scale per 128 x 128 block: 0.02 %


@dataclass(frozen=True)
class Architecture:
    """The config.json of one model, as the sizes that decide its memory."""

    config: dict

    def get(self, key, default=None):
        value = self.config.get(key)
        return default if value is None else value

    # ----- shapes ---------------------------------------------------------------------------------
    @property
    def hidden(self) -> int:
        return self.config["hidden_size"]

    @property
    def layers(self) -> int:
        return self.config["num_hidden_layers"]

    @property
    def heads(self) -> int:
        return self.config["num_attention_heads"]

    @property
    def kv_heads(self) -> int:
        return self.get("num_key_value_heads", self.heads)

    @property
    def head_dim(self) -> int:
        return self.get("head_dim", self.hidden // self.heads)

    @property
    def vocab(self) -> int:
        return self.config["vocab_size"]

    @property
    def experts(self) -> int:
        return self.get("n_routed_experts", self.get("num_experts", 0))

    @property
    def top_k(self) -> int:
        return self.get("num_experts_per_tok", 0)

    @property
    def moe_intermediate(self) -> int:
        return self.get("moe_intermediate_size", self.get("intermediate_size", 0))

    @property
    def dense_layers(self) -> int:
        """Layers with a dense MLP: all of a dense model, the first ``first_k_dense_replace`` of DeepSeek's."""
        return self.layers if not self.experts else self.get("first_k_dense_replace", 0)

    @property
    def shared_intermediate(self) -> int:
        """Width of the shared experts' MLP in a MoE layer (DeepSeek: n_shared x moe width; Qwen-Next: own)."""
        if "shared_expert_intermediate_size" in self.config:
            return self.config["shared_expert_intermediate_size"]
        return self.get("n_shared_experts", 0) * self.moe_intermediate

    @property
    def mla(self) -> bool:
        return bool(self.get("kv_lora_rank"))

    @property
    def hybrid_linear(self) -> bool:
        """Qwen3-Next: every ``full_attention_interval``-th layer attends, the others are linear attention."""
        return bool(self.get("full_attention_interval"))

    @property
    def vision(self) -> dict | None:
        return self.config.get("vision_config")

    @property
    def torch_dtype(self) -> str:
        return dtype_name(self.get("torch_dtype", "bfloat16"))

    @property
    def quant_method(self) -> str | None:
        return (self.config.get("quantization_config") or {}).get("quant_method")

    # ----- parameters -----------------------------------------------------------------------------
    def attention_params(self) -> int:
        """One layer's attention projections (MLA: the low-rank Q and KV paths)."""
        d = self.hidden
        if self.mla:
            nope, rope, v = self.config["qk_nope_head_dim"], self.config["qk_rope_head_dim"], self.config["v_head_dim"]
            q_rank, kv_rank = self.get("q_lora_rank", 0), self.config["kv_lora_rank"]
            q = d * q_rank + q_rank * self.heads * (nope + rope) if q_rank else d * self.heads * (nope + rope)
            kv = d * (kv_rank + rope) + kv_rank * self.heads * (nope + v)
            return q + kv + self.heads * v * d
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return d * (q + 2 * kv) + q * d

    def linear_attention_params(self) -> int:
        """One Gated-DeltaNet layer of Qwen3-Next: q/k/v/z projections, gates, output."""
        c = self.config
        key = c["linear_num_key_heads"] * c["linear_key_head_dim"]
        value = c["linear_num_value_heads"] * c["linear_value_head_dim"]
        return self.hidden * (2 * key + 2 * value + 2 * c["linear_num_value_heads"]) + value * self.hidden

    def mlp_params(self, width: int) -> int:
        return 3 * self.hidden * width  # gate, up, down

    def routed_expert_params(self) -> int:
        """All routed experts of one MoE layer. MXFP4 (gpt-oss) as vLLM stores it with its default kernel
        (Marlin, when the triton_kernels package is absent): hidden padded to 256, the expert width to 128."""
        if self.quant_method == "mxfp4":
            d, width = -(-self.hidden // 256) * 256, -(-self.moe_intermediate // 128) * 128
            return self.experts * 3 * d * width
        return self.experts * self.mlp_params(self.moe_intermediate)

    def moe_layer_params(self) -> int:
        routed = self.routed_expert_params()
        return routed + self.mlp_params(self.shared_intermediate) + self.hidden * self.experts  # + router

    def layer_params(self, index: int) -> tuple[int, int]:
        """(matrices a quantised checkpoint quantises, parameters kept in 16 bits) of layer ``index``."""
        attention = self.attention_params()
        if self.hybrid_linear and (index + 1) % self.config["full_attention_interval"]:
            attention = self.linear_attention_params()
        if index < self.dense_layers:
            mlp = self.mlp_params(self.config["intermediate_size"])
            router = 0
        else:
            mlp = self.moe_layer_params() - self.hidden * self.experts
            router = self.hidden * self.experts
        return attention + mlp, 2 * self.hidden + router

    def replicated_params(self, index: int) -> tuple[int, int]:
        """The part of ``layer_params(index)`` every tensor-parallel rank holds whole: (matrices, kept). vLLM
        builds MLA's down-projections (q_a_proj, kv_a_proj_with_mqa) and the MoE router as ReplicatedLinear, so
        they do not shrink with TP (0.8.3 deepseek_v2.py; DeepSeek-V2.5 at TP8: 0.61 GiB a rank)."""
        matrices = 0
        if self.mla:
            rope, kv_rank = self.config["qk_rope_head_dim"], self.config["kv_lora_rank"]
            matrices = self.hidden * (self.get("q_lora_rank", 0) or 0) + self.hidden * (kv_rank + rope)
        router = self.hidden * self.experts if self.experts and index >= self.dense_layers else 0
        return matrices, router

    def embedding_params(self) -> tuple[int, int]:
        """(input table, LM head): the head is 0 when tied to the table."""
        table = self.vocab * self.hidden
        return table, 0 if self.get("tie_word_embeddings", False) else table

    def vision_params(self) -> int:
        """A ViT tower: patch embedding, blocks (attention + MLP), and the merger/projector into the LM."""
        v = self.vision
        if not v:
            return 0
        h, inter = v["hidden_size"], v["intermediate_size"]
        mlp = (3 if v.get("mlp") == "gated" else 2) * h * inter
        blocks = v["depth"] * (4 * h * h + mlp + 4 * h)
        patch = 3 * v.get("temporal_patch_size", 1) * v["patch_size"] ** 2 * h
        merge = v.get("spatial_merge_size", 1) ** 2
        merger = (h * merge) ** 2 + h * merge * v.get("out_hidden_size", self.hidden)
        merger *= 1 + v.get("deepstack_layers", 0)
        if v.get("fixed_image_tokens"):  # Gemma 3: position table + a linear projector
            patch += (v["image_size"] // v["patch_size"]) ** 2 * h
            merger = h * self.hidden
        return blocks + patch + merger

    def rope_cache_rows(self) -> list[tuple[int, int]]:
        """(positions, rotary width) of each cos/sin table vLLM builds on the GPU for the text model while loading,
        in the model dtype, one per rotary setup (get_rope shares a table between layers with the same setup;
        rotary_embedding.py read in 0.7.1 and 0.8.3).

        The table covers the positions the scaling reaches: ``max_position_embeddings`` times the factor for
        linear and dynamic scaling (LinearScalingRotaryEmbedding), ``original_max_position_embeddings`` times it
        for YaRN (DeepSeek's too); Phi-3's longrope holds a short and a long table. Models with a local base
        (``rope_local_base_freq``: Gemma 3's sliding layers) build a second, unscaled table. The width is the
        rotary part of a head: ``qk_rope_head_dim`` with MLA, else ``head_dim x partial_rotary_factor``."""
        positions = self.get("max_position_embeddings", 2048)
        width = (
            self.config["qk_rope_head_dim"] if self.mla else int(self.head_dim * self.get("partial_rotary_factor", 1))
        )
        scaling = self.get("rope_scaling", {})
        kind, factor = scaling.get("rope_type", scaling.get("type")), scaling.get("factor", 1)
        if kind in ("linear", "dynamic"):
            rows = [int(positions * factor)]
        elif kind in ("yarn", "deepseek_yarn"):
            rows = [int(scaling.get("original_max_position_embeddings", positions) * factor)]
        elif kind in ("longrope", "su"):
            rows = [scaling.get("original_max_position_embeddings", positions) + positions]
        else:
            rows = [positions]
        if self.get("rope_local_base_freq"):
            rows.append(positions)
        return [(n, width) for n in rows]

    def mla_absorbed_params(self, tp: int = 1) -> int:
        """One layer's matrices vLLM 0.7.1-0.7.3's MLA backend adds after loading, on one tensor-parallel rank
        (attention/backends/mla/utils.py process_weights_after_loading with matrix absorption): W_Q_UK (the query
        projection times kv_b_proj's key half), W_QR (the query's rotary columns, copied) and W_UV_O (kv_b_proj's
        value half times o_proj), each for the rank's heads. The projections themselves stay for the prefill."""
        if not self.mla:
            return 0
        c, heads = self.config, max(1, self.heads // tp)
        q_in = self.get("q_lora_rank", 0) or self.hidden
        rank = c["kv_lora_rank"]
        return heads * (q_in * rank + q_in * c["qk_rope_head_dim"] + rank * self.hidden)

    def mla_kv_b_params(self, tp: int = 1) -> int:
        """One layer's kv_b_proj on one tensor-parallel rank (the latent's up-projection to the rank's heads' keys
        and values): what vLLM 0.8's MLA backend dequantises into a model-dtype copy for a quantised checkpoint."""
        if not self.mla:
            return 0
        c = self.config
        return c["kv_lora_rank"] * max(1, self.heads // tp) * (c["qk_nope_head_dim"] + c["v_head_dim"])

    # ----- bytes per GPU --------------------------------------------------------------------------
    def quantised_bytes_per_weight(self, n_in: int) -> float:
        method, q = self.quant_method, self.config.get("quantization_config") or {}
        if method in ("gptq", "awq", "awq_marlin", "gptq_marlin", "compressed-tensors"):
            from tinyformer.quantize import checkpoint_bytes_per_parameter

            return checkpoint_bytes_per_parameter("int4", n_in, q.get("group_size", 128))
        if method == "fp8":
            return FP8_BYTES
        if method == "bitsandbytes":
            return NF4_DOUBLE_QUANT_BYTES
        if method == "mxfp4":
            return MXFP4_BYTES
        raise ValueError(f"unknown quant_method {method!r} in quantization_config.")

    def weight_bytes_per_gpu(self, dtype: str, tp: int = 1, pp: int = 1) -> list[int]:
        """Bytes of weights one GPU of each pipeline stage holds: the layers split over the stages as vLLM
        splits them (:func:`stage_layer_ranges`), the embedding table on the first stage and the LM head on the last,
        every matrix split over ``tp`` ranks.

        Quantised checkpoints quantise the layers' matrices (gpt-oss, MXFP4: only the experts'), the
        embeddings, norms, routers and vision tower stay in ``dtype``.
        """
        b = 2 if dtype_name(dtype) in ("bf16", "fp16") else 4
        method = self.quant_method
        bounds = _stage_bounds(self.layers, pp)
        table, head = self.embedding_params()
        out = []
        for stage, (start, stop) in enumerate(bounds):
            quantised = kept = whole_quantised = whole_kept = 0
            for index in range(start, stop):
                matrices, small = self.layer_params(index)
                rep_matrices, rep_small = self.replicated_params(index)
                matrices, small = matrices - rep_matrices, small - rep_small
                whole_kept += rep_small
                if method == "mxfp4":  # only the routed experts are MXFP4
                    experts = self.routed_expert_params()
                    quantised += experts
                    kept += matrices - experts + small
                    whole_kept += rep_matrices
                else:
                    quantised += matrices if method else 0
                    kept += small + (0 if method else matrices)
                    whole_quantised += rep_matrices if method else 0
                    whole_kept += 0 if method else rep_matrices
            if stage == 0:
                kept += table + self.vision_params()
            if stage == pp - 1:
                kept += (head or (table if pp > 1 else 0)) + self.hidden
            per_weight = self.quantised_bytes_per_weight(self.hidden) if method else 0
            split = (quantised * per_weight + kept * b) / tp
            out.append(math.ceil(split + whole_quantised * per_weight + whole_kept * b))
        return out

    def kv_bytes_per_token(self, kv_dtype: str, tp: int, stage_layers: int, latent: bool = True) -> int:
        """KV bytes per token on one rank of a stage with ``stage_layers`` layers (MLA: the latent, unsplit)."""
        if self.mla and latent:
            return mla_kv_bytes_per_token(
                stage_layers, self.config["kv_lora_rank"], self.config["qk_rope_head_dim"], kv_dtype
            )
        if self.mla:  # before vLLM 0.7.1: K and V expanded per head, V padded to the K head size
            k_dim = self.config["qk_nope_head_dim"] + self.config["qk_rope_head_dim"]
            return kv_bytes_per_token(stage_layers, self.heads, k_dim, kv_dtype, tp)
        layers = stage_layers if not self.hybrid_linear else stage_layers // self.config["full_attention_interval"]
        return kv_bytes_per_token(layers, self.kv_heads, self.head_dim, kv_dtype, tp)

    def linear_state_bytes(self, tp: int, state_dtype: str = "bf16") -> int:
        """Qwen3-Next: one linear-attention layer's recurrent state per sequence on one rank (conv + SSM)."""
        c = self.config
        b = 2 if dtype_name(state_dtype) in ("bf16", "fp16") else 4
        key, value = (
            c["linear_num_key_heads"] * c["linear_key_head_dim"],
            c["linear_num_value_heads"] * c["linear_value_head_dim"],
        )
        conv = (2 * key + value) // tp * (c["linear_conv_kernel_dim"] - 1)
        ssm = c["linear_num_value_heads"] // tp * c["linear_key_head_dim"] * c["linear_value_head_dim"]
        return (conv + ssm) * b


def stage_layer_ranges(layers: int, pp: int, partition: str | None = None) -> list[range]:
    """The layers each of ``pp`` pipeline stages holds, as vLLM 0.32's ``get_pp_indices`` splits them.

    ``layers // pp`` per stage; a remainder goes one layer each to the stages *before* the last, from the
    second-to-last backwards (the last stage also runs the final norm and the LM head, the first the embeddings):
    10 layers over 4 stages are 2, 3, 3, 2. ``partition`` is vLLM's ``VLLM_PP_LAYER_PARTITION`` ("4,2,2,2": layers
    per stage), which replaces the rule; it must name ``pp`` stages and ``layers`` layers in all."""
    if isinstance(pp, bool) or not isinstance(pp, int) or pp < 1:
        raise ValueError(f"pp (the pipeline-parallel size) must be a whole number of at least 1, got {pp!r}.")
    if partition is None:
        base, extra = divmod(layers, pp)
        sizes = [base] * pp
        for stage in range(pp - 1 - extra, pp - 1):  # the `extra` stages just before the last
            sizes[stage] += 1
    else:
        sizes = _partition_sizes(partition, layers, pp)
    starts = [sum(sizes[:stage]) for stage in range(pp)]
    return [range(start, start + size) for start, size in zip(starts, sizes, strict=True)]


def _partition_sizes(partition: str, layers: int, pp: int) -> list[int]:
    """VLLM_PP_LAYER_PARTITION's layers per stage, refused as vLLM refuses them (in words that say what to change)."""
    try:
        sizes = [int(size) for size in partition.split(",")]
    except ValueError:
        raise ValueError(
            f"VLLM_PP_LAYER_PARTITION={partition!r} is not a comma-separated list of layer counts, e.g. '3,1'."
        ) from None
    if len(sizes) != pp or sum(sizes) != layers:
        raise ValueError(
            f"VLLM_PP_LAYER_PARTITION={partition!r} names {len(sizes)} stage(s) holding {sum(sizes)} layers; the "
            f"model has {layers} layers over pipeline_parallel_size={pp} stages: give {pp} counts that add up to "
            f"{layers}."
        )
    return sizes


def _stage_bounds(layers: int, pp: int) -> list[tuple[int, int]]:
    return [(stage.start, stage.stop) for stage in stage_layer_ranges(layers, pp)]


def stage_layer_counts(layers: int, pp: int) -> list[int]:
    """How many layers each pipeline stage holds (:func:`stage_layer_ranges`)."""
    return [len(stage) for stage in stage_layer_ranges(layers, pp)]
