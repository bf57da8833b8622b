"""The model's own configuration: everything the shared layers need to build one family's decoder.

Families differ in a handful of switches (norm convention, activation, attention schedule, MoE, MLA), so one
config describes them all; ``families/<name>.py`` translates a Hugging Face config.json into this. Every
field added for a family defaults to the behaviour of the plain decoder, so ``TransformerConfig(...)`` built
by hand keeps meaning what it always meant.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclass(frozen=True)
class MoEConfig:
    """Routed feed-forward layers (Qwen3-MoE, Mixtral, DeepSeekMoE)."""

    n_experts: int
    top_k: int
    ffn_dim: int  # per routed expert
    n_shared: int = 0  # shared experts, run as one dense MLP of n_shared * ffn_dim (DeepSeek)
    first_dense: int = 0  # leading layers with a dense MLP instead (DeepSeek first_k_dense_replace)
    score: str = "softmax"  # softmax (Qwen3-MoE, Mixtral) | sigmoid (DeepSeek-V3)
    norm_topk: bool = True  # renormalise the chosen experts' weights to sum to one
    scaling: float = 1.0  # routed_scaling_factor
    n_group: int = 1  # grouped top-k: pick topk_group groups first, then top_k experts inside them
    topk_group: int = 1
    group_score: str = "top2"  # a group's score: "top2" (its best two summed: DeepSeek-V3) | "max" (DeepSeek-V2)
    score_bias: bool = False  # per-expert bias added for selection only (DeepSeek aux-loss-free balancing)
    bias_on_logits: bool = False  # sigmoid routing: the selection bias added to the router logits, not the scores
    router_softcap: float = 0.0  # router logits soft-capped, c * tanh(logits / c), before scoring (Laguna); 0: none
    aux_loss_coef: float = 0.0  # weight of the Switch-style balancing loss; 0 where the family uses none
    impl: str = "ragged"  # expert computation: ragged (grouped matmul) | dense (every expert, reference)
    # Expert parallelism (a mesh with expert > 1): 0 = dropless; else each device receives at most
    # capacity_factor * (its tokens * top_k) / expert-axis-size copies per source, and the rest are dropped.
    capacity_factor: float = 0.0
    dense_layers: tuple[int, ...] = ()  # layers with a dense MLP between MoE ones (Qwen mlp_only_layers, sparse step)
    shared_ffn: int = 0  # width of the shared-expert MLP when not n_shared * ffn_dim (Qwen2-MoE)
    shared_gate: bool = False  # the shared expert's output scaled by sigmoid(x . w) (Qwen2-MoE)
    router_bias: bool = False  # the router's logits have a learned bias (gpt-oss)
    expert_bias: bool = False  # every expert's projections have biases (gpt-oss)
    # routed experts work in a narrower space: tokens projected d_model -> latent_dim before them and back after
    # (Nemotron-3-Super's fc1/fc2_latent_proj); the router and the shared expert see the full width. 0: none
    latent_dim: int = 0
    # Gemma 4's MoE layers (26B-A4B): a dense MLP of the model's ffn_dim beside the experts, each with norms of its
    # own before and after, their outputs summed (``beside_dense``); the router reads the layer's input RMS-
    # normalised without a scale, times a learned scale per channel and d_model ** -0.5 (``router_norm``), and
    # the chosen experts' weights are times a learned scale per expert (``expert_scale``)
    beside_dense: bool = False
    router_norm: bool = False
    expert_scale: bool = False
    # the shared experts' output and the routed experts' averaged, not summed (Command A+: its
    # ``shared_expert_combination_strategy: average``)
    shared_average: bool = False
    # the MoE block's output (routed and shared experts together) RMS-normalised with a learned scale (A.X K1)
    post_norm: bool = False

    def is_moe(self, layer: int) -> bool:
        """Does ``layer`` route over experts (rather than run a dense MLP)?"""
        return layer >= self.first_dense and layer not in self.dense_layers


@dataclass(frozen=True)
class MLAConfig:
    """Multi-head latent attention (DeepSeek-V2/V3): low-rank q and kv, decoupled rotary key."""

    q_lora_rank: int  # 0: plain q projection
    kv_lora_rank: int
    qk_nope_dim: int
    qk_rope_dim: int
    v_dim: int
    rope_interleave: bool = True  # rotary pairs are (x0, x1), (x2, x3), ... as in DeepSeek's weights
    # DeepSeek Sparse Attention (DeepSeek-V3.2, ``models/layers/dsa``): a lightning indexer of ``index_heads``
    # heads of ``index_dim`` picks each query's ``index_topk`` keys (0: dense attention); its rotary dims pair
    # as (x_i, x_i+D/2) unless ``index_rope_interleave``
    index_topk: int = 0
    index_heads: int = 0
    index_dim: int = 0
    index_rope_interleave: bool = False


@dataclass(frozen=True)
class LinearAttnConfig:
    """Recurrent layers among the attention ones: which layers, their kind, key/value heads and head dims, and
    the causal convolution's kernel. ``kind``: ``gated_deltanet`` (Qwen3.5, Qwen3-Next:
    ``models/layers/gated_deltanet``), ``mamba2`` (Granite 4.0-H: ``models/layers/mamba2``), whose B/C groups,
    state size, heads and head size are k_heads, k_dim, v_heads and v_dim (its state [H, N, P] is a Gated
    DeltaNet state's [Hv, dk, dv]; ``conv_bias`` and ``dt_limit`` are Mamba-2's), or ``shortconv`` (LFM2:
    ``models/layers/short_conv``; no state: k_heads 0, one value head of d_model channels) or ``kda`` (Kimi
    Linear's Kimi Delta Attention: Gated DeltaNet with a decay per key dimension, ``KimiDeltaAttention``; k_heads =
    v_heads)."""

    layers: tuple[int, ...]
    k_heads: int
    v_heads: int
    k_dim: int
    v_dim: int
    conv: int = 4
    kind: str = "gated_deltanet"
    conv_bias: bool = False
    dt_limit: tuple[float, float] = (0.0, float("inf"))
    # Falcon-H1 (Mamba-2 only): ``parallel`` layers run the mixer beside attention on the same normed input and
    # add both outputs (``layers`` is then every layer, each with a KV cache and a recurrent state); the mixer's
    # input and output (parallel or not) times ``in_multiplier`` / ``out_multiplier``, its z, x, B, C and dt
    # projections times
    # ``multipliers`` (muP); ``norm``: "gated" (Mamba-2's RMSNorm of y * SiLU(z)), "before_gate" (RMSNorm of y,
    # then times SiLU(z)) or "none" (y * SiLU(z), no norm weight)
    # OLMo Hybrid (Gated DeltaNet only): beta times ``beta_scale`` (2: ``allow_neg_eigval``, beta in [0, 2]), the
    # output norm's eps (0: the model's norm_eps), and ``pre_norm``: these layers put their norms before the mixer
    # and the MLP even where the attention layers only norm their outputs
    beta_scale: float = 1.0
    norm_eps: float = 0.0
    pre_norm: bool = False
    parallel: bool = False
    norm: str = "gated"
    in_multiplier: float = 1.0
    out_multiplier: float = 1.0
    multipliers: tuple[float, float, float, float, float] = (1.0, 1.0, 1.0, 1.0, 1.0)

    @property
    def channels(self) -> int:
        """The convolution's channels: q and k of every key head, then v of every value head (Mamba-2: x of
        every head, B and C of every group)."""
        return 2 * self.k_heads * self.k_dim + self.v_heads * self.v_dim


@dataclass(frozen=True)
class LoRAConfig:
    """Low-rank adapters on the named projections (see ``models/lora.py``): ``W + alpha / rank * A @ B``."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0  # on the adapters' input, training passes only
    targets: tuple[str, ...] = ("q", "k", "v", "o")  # q k v o gate up down; MLA: q_a q_b kv_a kv_b
    experts: bool = False  # also adapt routed experts' gate/up/down (merged per layer)
    rslora: bool = False  # scale alpha / sqrt(rank) (PEFT use_rslora)
    # GRPO sampler: fold the adapters into the weights once per policy update (decode ~3.4x faster, the
    # default) instead of applying them unmerged with the trainer's own arithmetic
    merge_sampling: bool = True


@dataclass(frozen=True)
class TransformerConfig:
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # e.g. {"rope_type": "llama3", ...}
    norm_eps: float = 1e-6
    qkv_bias: bool = False
    qk_norm: bool = False
    tie_embeddings: bool = True
    max_seq_len: int = 2048
    param_dtype: str = "float32"
    dtype: str = "float32"
    remat: str = "none"  # none | full | dots | nested
    scan_layers: bool = True
    # Multi-token passes (training, scoring, prefill) of a stack of at most this many layers run unrolled:
    # no stacked residual buffers or per-layer slices (W1's update ~8% faster on CPU) for compile time that
    # grows with depth, so only shallow stacks. Decode (one token a row) scans unless decode_layers unrolls it.
    unroll_max: int = 4
    family: str = "qwen2"
    extra: dict = field(default_factory=dict)  # family-specific fields (kept for round trips)
    # --- switches some families need (defaults: the plain decoder)
    norm_offset: float = 0.0  # Gemma stores RMSNorm weights as w and scales by 1 + w
    embed_scale: bool = False  # Gemma multiplies embeddings by sqrt(d_model)
    # Granite's muP scalars: embeddings times embed_multiplier, each layer's attention and MLP outputs times
    # residual_multiplier before their residual adds, logits divided by logits_scaling (1.0: none)
    embed_multiplier: float = 1.0
    residual_multiplier: float = 1.0
    logits_scaling: float = 1.0
    # Falcon-H1's muP scalars (1.0: none): keys times key_multiplier after their projection; the attention's
    # input and output times attn_in/attn_out_multiplier; the MLP's gate projection times mlp_multipliers[0]
    # before the activation and its output times mlp_multipliers[1]; logits times logits_multiplier
    key_multiplier: float = 1.0
    attn_in_multiplier: float = 1.0
    attn_out_multiplier: float = 1.0
    mlp_multipliers: tuple[float, float] = (1.0, 1.0)
    logits_multiplier: float = 1.0
    # silu | gelu_tanh | clamped_swiglu (the gated MLP's) | relu2 (ungated: Nemotron-H) | xielu (ungated, with
    # learned scalars per layer: Apertus; dense MLPs only)
    activation: str = "silu"
    query_scale: float | None = None  # softmax scale; None: head_dim ** -0.5
    sandwich_norm: bool = False  # Gemma: extra RMSNorm on the attention and MLP outputs
    attn_softcap: float | None = None
    final_softcap: float | None = None
    sliding_window: int = 0  # keys strictly less than this many slots back; 0: no window
    layer_types: tuple[str, ...] | None = None  # "full" | "sliding" per layer; None: all "sliding" if window
    rope_local_theta: float | None = None  # Gemma: rope base of sliding layers (no scaling there)
    nope_layers: tuple[int, ...] = ()  # layers whose attention has no rotary embedding at all (SmolLM3's NoPE)
    rope_interleave: bool = False  # rotary pairs are (x0, x1), (x2, x3), ... not (x_i, x_i+D/2) (ERNIE 4.5)
    moe: MoEConfig | None = None
    mla: MLAConfig | None = None
    linear: LinearAttnConfig | None = None  # Gated DeltaNet layers (a recurrent state per row, not a KV cache)
    # layers that are a mixer (attention or linear) alone, with no MLP after it (Nemotron-H: a Mamba-2 or attention
    # layer that no MLP layer follows)
    mixer_only_layers: tuple[int, ...] = ()
    attn_gate: bool = False  # attention output scaled by sigmoid(x W_gate) per head dim (Qwen3.5, Qwen3-Next)
    head_gate: bool = False  # each head's attention output scaled by one sigmoid(x W_head_gate) per head (LFM3)
    gate_act: str = "sigmoid"  # the attention output gates' function: sigmoid | softplus (Laguna)
    gate_bias: bool = False  # a learned per-head bias added to the gates' logits (Beam)
    # Beam: each residual add scaled by its depth, the k-th (2 per layer, from k = 2) x sqrt((k - 1) / k) + h / sqrt(k)
    depth_residual: bool = False
    # (p, L): the queries of layers without rotary (``nope_layers``) times (1 + (position + 1) / L) ** p, a scalable
    # softmax's length scale (Beam: (0.1, 2048))
    nope_query_scale: tuple[float, float] | None = None
    pre_norm: bool = True  # RMSNorm before attention and MLP; False (OLMo-2): only the sandwich post-norms
    qk_norm_whole: bool = False  # q/k RMSNorm over the whole projection (all heads), not per head (OLMo-2)
    qk_norm_after_rope: bool = False  # q/k RMSNorm applied to the rotated q/k, not before the rotary (Hunyuan)
    attn_sinks: bool = False  # a learned per-head logit joins every softmax (gpt-oss)
    # Full-attention layers unlike the sliding ones beside them (MiMo-V2-Flash: half the key/value heads and no
    # sinks): their key/value heads (0: n_kv_heads) and, with attn_sinks, whether they have sinks too. Such
    # layers stack apart (``full_`` stacks); the cache then holds each kind's keys/values in a buffer of its own
    # shape (``cache_kinds``)
    full_kv_heads: int = 0
    full_sinks: bool = True
    # Gemma 4's full layers: heads of their own size (0: head_dim), values that are the keys' projection itself
    # (before the keys' norm and rotary: no value projection)
    full_head_dim: int = 0
    full_k_eq_v: bool = False
    # Laguna's full layers: fewer query heads than the sliding ones (0: n_heads), and rotary dims of their own (0:
    # rope_dim's); such layers stack apart too
    full_heads: int = 0
    full_rope_dim: int = 0
    v_head_dim: int = 0  # the value heads' size when not head_dim (MiMo-V2-Flash: 128 beside 192)
    value_scale: float = 1.0  # values times it after their projection, before the cache (MiMo-V2-Flash)
    v_norm: bool = False  # values RMS-normalised per head, without a scale, before the cache (Gemma 4)
    layer_scalar: bool = False  # each layer's output times a stored per-layer scalar, not trained (Gemma 4)
    # Gemma 4 E2B/E4B's per-layer input embeddings (0: none): each token has ``ple_dim`` values per layer, from a
    # table of its own plus a projection of the token's embedding, which each layer gates into its output
    ple_dim: int = 0
    ple_vocab: int = 0  # the per-layer table's rows (0: vocab_size); at least vocab_size
    # the last ``kv_shared_layers`` layers compute no keys/values of their own: each attends over those of the last
    # earlier layer of its kind (sliding or full), reading that layer's cache (``kv_owners``); with
    # ``double_wide_mlp`` their MLPs are twice ``ffn_dim`` wide (Gemma 4 E2B/E4B)
    kv_shared_layers: int = 0
    double_wide_mlp: bool = False
    # Cohere's layers: the norms subtract the mean first (a LayerNorm without a bias), and attention and MLP read
    # the same normed input, both outputs added to the residual (one norm per layer)
    norm_center: bool = False
    parallel_block: bool = False
    # Jais-2's LayerNorms: the layers' and the final norm add a learned bias (with norm_center: nn.LayerNorm); its
    # dense MLPs' projections have biases
    norm_bias: bool = False
    mlp_bias: bool = False
    out_bias: bool = False  # the attention output projection has a bias (gpt-oss)
    # nanochat: every RMSNorm without a weight (layers', q/k's and the final one), the embeddings normed by the final
    # norm before the first layer, and the rotary turning the other way (its rotate-half flips the other half's sign)
    norm_weight: bool = True
    # OLMo (1): the attention's q, k and v projections clamped to [-clip_qkv, clip_qkv] (0: not clamped)
    clip_qkv: float = 0.0
    embed_norm: bool = False
    rope_reverse: bool = False
    swiglu_alpha: float = 1.702  # activation "clamped_swiglu" (gpt-oss): (clip(u) + 1) * g * sigmoid(alpha g)
    swiglu_limit: float = 7.0
    rope_dim: int = 0  # rotary dims of each head (the leading ones); 0: all (Phi-4-mini rotates 3/4)
    # (beta, L): queries times 1 + beta * log(1 + floor(position / L)) after the rotary, so attention stays sharp
    # past the length the model was trained at (Ministral 3: llama_4_scaling_beta, original_max_position_embeddings)
    query_length_scale: tuple[float, int] | None = None
    lora: LoRAConfig | None = None  # adapters attached to the targeted weights (frozen base + trainable A, B)
    # attention kernels: auto (GPU: cuDNN flash for multi-token calls, Pallas for decode; else XLA) | xla |
    # cudnn | pallas; calls a kernel cannot compute exactly take XLA (models/layers/kernels.py)
    attention_impl: str = "auto"
    # decode steps over the contiguous cache: "scan" (the stacked cache, layers scanned), "unroll" (one cache
    # buffer per layer and each layer's weights sliced once per sampling call, layers unrolled: no per-step
    # copies of either; costs a second copy of the layer weights while sampling), "auto" (unroll off CPU)
    decode_layers: str = "auto"
    # every row's numbers independent of the call's shape (models/layers/invariant.py): the sampler's log-probs
    # equal the trainer's bit for bit, at a cost in speed; dense GQA attention models
    batch_invariant: bool = False

    @property
    def jnp_dtype(self):
        return DTYPES[self.dtype]

    @property
    def jnp_param_dtype(self):
        return DTYPES[self.param_dtype]

    @property
    def sliding_layers(self) -> tuple[bool, ...]:
        """Per layer: does it use the sliding window?"""
        if self.layer_types is None:
            return (self.sliding_window > 0,) * self.n_layers
        return tuple(t == "sliding" for t in self.layer_types)

    @property
    def attention_layers(self) -> tuple[int, ...]:
        """The layers with softmax attention (and a KV cache): all but the linear-attention ones."""
        skip = set(self.linear.layers) if self.linear is not None and not self.linear.parallel else set()
        return tuple(i for i in range(self.n_layers) if i not in skip)

    @property
    def kv_owners(self) -> tuple[int, ...]:
        """Per layer, the layer whose keys/values it attends over: itself, or for the last ``kv_shared_layers``
        layers the last earlier layer of the same kind (sliding or full), as the reference pairs them."""
        n, shared = self.n_layers, self.kv_shared_layers
        if not shared:
            return tuple(range(n))
        if not 0 < shared < n:
            raise ValueError(f"kv_shared_layers: {shared} must leave at least one of the {n} layers its own "
                             "keys/values")
        first = n - shared
        owners = list(range(first))
        for i in range(first, n):
            same = [j for j in range(first) if self.sliding_layers[j] == self.sliding_layers[i]]
            if not same:
                kind = "sliding" if self.sliding_layers[i] else "full"
                raise ValueError(f"kv_shared_layers: layer {i} ({kind} attention) shares keys/values, but no "
                                 f"earlier {kind} layer computes them")
            owners.append(same[-1])
        return tuple(owners)

    @property
    def cached_layers(self) -> tuple[int, ...]:
        """The attention layers that hold keys/values in the cache: all but those sharing another's."""
        owners = self.kv_owners
        return tuple(i for i in self.attention_layers if owners[i] == i)

    @property
    def cache_slots(self) -> tuple[int, ...]:
        """Per layer, its index in its kind's cache: an attention layer's in the KV cache (which holds the
        attention layers only; with ``cache_kinds``, in its kind's buffer; a layer sharing another's keys/values
        has that layer's index), a linear-attention layer's in the recurrent states (a parallel layer's index is
        the same in both: every layer is in each)."""
        lin = self.linear.layers if self.linear is not None else ()
        kinds, owners = self.cache_kinds, self.kv_owners
        att = {k: tuple(i for i in self.cached_layers if self.cache_kind(i) == k) for k in kinds or (None,)}
        return tuple(lin.index(i) if i in lin else att[self.cache_kind(i)].index(owners[i])
                     for i in range(self.n_layers))

    @property
    def cache_kinds(self) -> tuple[str, ...]:
        """("sliding", "full") when the full-attention layers' keys/values have another shape than the sliding
        ones' (Gemma 4's fewer and wider heads, MiMo-V2-Flash's fewer heads): the cache then holds each kind in
        a buffer of its own shape (``KVCache.k`` a dict by kind), so neither pays for the other's; () otherwise
        (one buffer for every attention layer)."""
        if not self.split_full or self.mla is not None:
            return ()
        att = self.attention_layers
        shapes = {self.kv_shape_of(k) for k in ("sliding", "full")
                  if any(self.sliding_layers[i] == (k == "sliding") for i in att)}
        return ("sliding", "full") if len(shapes) > 1 else ()

    def cache_kind(self, layer: int) -> str | None:
        """Layer ``layer``'s buffer in the cache: its kind with ``cache_kinds``, else None (the one buffer)."""
        if not self.cache_kinds:
            return None
        return "sliding" if self.sliding_layers[layer] else "full"

    def stack_cache_kind(self, stack: str) -> str | None:
        """The cache buffer of a layer stack's layers (with ``cache_kinds`` the full stacks' are apart)."""
        if not self.cache_kinds:
            return None
        return "full" if stack.startswith("full_") else "sliding"

    def kv_shape_of(self, kind: str | None) -> tuple[int, int, int, int]:
        """(K_k, D_k, K_v, D_v) of one kind's layers ("sliding" or "full"), or None: the cache's one buffer."""
        if kind is None:
            return self.kv_shape
        full = kind == "full"
        kv = self.full_kv_heads if full and self.full_kv_heads else self.n_kv_heads
        d = self.full_head_dim if full and self.full_head_dim else self.head_dim
        return kv, d, kv, self.v_head_dim or d

    @property
    def split_full(self) -> bool:
        """Do the full-attention layers have other attention parameters than the sliding ones (their own
        key/value heads, or no sinks), and so stacks of their own?"""
        return ((self.full_kv_heads not in (0, self.n_kv_heads)) or (self.attn_sinks and not self.full_sinks)
                or self.full_head_dim not in (0, self.head_dim) or self.full_k_eq_v
                or self.full_heads not in (0, self.n_heads)
                or self.full_rope_dim not in (0, self.rope_dim or self.full_head_dim or self.head_dim))

    @property
    def kv_shape(self) -> tuple[int, int, int, int]:
        """Per-slot cache entry shapes (K_k, D_k, K_v, D_v) of the cache's one buffer (with ``cache_kinds``, the
        largest of each: ``kv_shape_of`` gives each kind's). MLA caches its latent and its rotary key (then, with
        sparse attention, the indexer's key)."""
        if self.mla is not None:
            m = self.mla
            return 1, m.kv_lora_rank, 1, m.qk_rope_dim + (m.index_dim if m.index_topk else 0)
        shapes = [self.kv_shape_of("sliding" if self.sliding_layers[i] else "full") for i in self.attention_layers]
        kv, d = (max(s[j] for s in shapes or [(self.n_kv_heads, self.head_dim)]) for j in (0, 1))
        return kv, d, kv, self.v_head_dim or d
