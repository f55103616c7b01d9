"""Inside the model: logit-lens entropy per layer and attention entropy, in bounded memory.

Two per-token records, both opt-in because they cost a forward pass:

- **Logit lens** (Entropy-Lens, arXiv 2502.16570): for each kept layer l and position t, the
  residual stream after block l goes through the model's final norm, the unembedding and
  any logit soft-cap, then a softmax; we keep its entropy (nats) and its top-1 token. The
  parts are found generically (:func:`find_lens_parts`), and every run checks that the lens
  of the last layer reproduces the model's own logits, so a model whose head we misread
  fails loudly instead of giving wrong numbers. [layers x tokens x vocabulary] logits are
  never held: each layer's output is reduced in chunks of rows as soon as the block emits it
  (a forward hook), so at most [chunk x vocabulary] logits exist at once.
- **Attention entropy** ("Not All Tokens Learn Alike", arXiv 2605.07660): for query t the
  attention weights over the visible keys j <= t form a distribution; its entropy measures
  how diffuse the token's contextual support is (low: anchors, high: explorers). Eager
  attention would hold two [heads x T x T] float32 maps per layer (about 1.2 GB at 4,096
  tokens for SmolLM2-135M), so instead we register an attention function with transformers'
  ``AttentionInterface``: it sees queries and keys after the rotary embedding and computes
  softmax, entropy and the attention output itself, one chunk of queries at a time.

Alignment with the trace: row i of every array belongs to completion token i and is read at
the position that *predicted* it (position n_prompt - 1 + i), the same position whose logits
give the token's recorded entropy. So the last layer's lens entropy of row i equals the
token entropy at T=1, and the attention entropy of row i is that of the query which chose
token i.

Layers are numbered from 1: lens layer l is the residual stream after block l (so layer L is
the model's output), attention layer l is the attention inside block l.

For generated traces the layer arrays come from a second, teacher-forced pass over the
generated sequence (one forward pass per trace): simpler than hooking every decoding step
and exact, since a causal model gives the same activations either way.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .errors import LayerRecordingError

#: name under which the entropy-recording attention is registered with transformers
ATTENTION_NAME = "thinkscope_entropy"
#: logit lens: residual rows per chunk, and float32 logits per [rows x columns] block (4 MB:
#: the block and its two products stay in the last-level cache between the matmul and the
#: reductions; smaller blocks fit better but each torch op is a parallel region that a busy
#: 2-CPU machine makes wait), in whole multiples of LENS_COLS columns
LENS_ROWS = 1024
LENS_BLOCK_ELEMS = 1 << 20
LENS_COLS = 256
#: scores budget per chunk of queries in the chunked attention (bytes, float32)
ATTN_CHUNK_BYTES = 40 << 20


@dataclass(frozen=True)
class LayerOptions:
    """What to record per layer; stored with the run settings.

    lens_every: keep every n-th layer's logit lens (the last layer is always kept).
    head_layer: the layer (1-based) whose per-head attention entropy is kept; None: the
    middle layer.
    """

    logit_lens: bool = False
    lens_every: int = 1
    attention_entropy: bool = False
    head_layer: int | None = None

    @property
    def enabled(self) -> bool:
        return self.logit_lens or self.attention_entropy

    @classmethod
    def from_settings(cls, settings) -> "LayerOptions":
        """Options from any object with the same attribute names (GenerationSettings)."""
        return cls(logit_lens=bool(getattr(settings, "logit_lens", False)),
                   lens_every=int(getattr(settings, "lens_every", 1) or 1),
                   attention_entropy=bool(getattr(settings, "attention_entropy", False)),
                   head_layer=getattr(settings, "head_layer", None))


def lens_layers(n_layers: int, every: int = 1) -> list[int]:
    """The 1-based layers whose logit lens is kept: every n-th, and always the last one."""
    if n_layers < 1:
        raise LayerRecordingError(f"the model reports {n_layers} layers")
    every = max(1, int(every))
    return sorted(set(range(every, n_layers + 1, every)) | {n_layers})


def resolve_head_layer(n_layers: int, head_layer: int | None) -> int:
    """The 1-based layer for per-head attention entropy (None -> the middle layer)."""
    layer = (n_layers + 1) // 2 if head_layer is None else int(head_layer)
    if not 1 <= layer <= n_layers:
        raise LayerRecordingError(f"head layer {layer} is outside 1..{n_layers}")
    return layer


# --------------------------------------------------------------------------- model parts


@dataclass
class LensParts:
    """What turns a residual stream into logits: final norm, unembedding, scale, soft-cap."""

    blocks: nn.ModuleList           # the decoder blocks, in order
    norm: nn.Module | None          # final norm (None: the model has none)
    weight: torch.Tensor            # [vocab, hidden] unembedding
    bias: torch.Tensor | None
    scale: float = 1.0              # logits multiplied by this (Cohere logit_scale, 1/Granite logits_scaling)
    softcap: float | None = None    # logits -> softcap * tanh(logits / softcap) (Gemma 2/3)
    names: dict = field(default_factory=dict)  # where each part was found, for messages

    @property
    def n_layers(self) -> int:
        return len(self.blocks)


def _text_config(model):
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def find_lens_parts(model) -> LensParts:
    """Find the decoder blocks, final norm, unembedding and logit soft-cap of a causal LM.

    Generic, not a table per architecture: the blocks are the ModuleList with
    ``num_hidden_layers`` entries; the final norm is the norm-like module that the base model
    registers after its blocks (Llama/Qwen/Gemma ``norm``, GPT-2 ``ln_f``); the unembedding
    is ``get_output_embeddings()``; the soft-cap and scale come from the config
    (``final_logit_softcapping``, ``logit_scale``, ``logits_scaling``). A wrong guess is
    caught by :func:`record_layers`, which checks the last layer against the model's logits.
    """
    cfg = _text_config(model)
    n = int(getattr(cfg, "num_hidden_layers", 0) or 0)
    lists = [(name, m) for name, m in model.named_modules()
             if isinstance(m, nn.ModuleList) and len(m) == n and n > 0]
    if not lists:
        raise LayerRecordingError(f"{type(model).__name__}: no list of {n} decoder blocks found")
    blocks_name, blocks = min(lists, key=lambda x: x[0].count("."))
    parent_name = blocks_name.rpartition(".")[0]
    parent = model.get_submodule(parent_name) if parent_name else model
    norm, norm_name, after = None, None, False
    for name, child in parent.named_children():
        if child is blocks:
            after = True
            continue
        if after and "norm" in type(child).__name__.lower():
            norm, norm_name = child, f"{parent_name}.{name}".lstrip(".")
            break
    head = model.get_output_embeddings()
    if head is None or not hasattr(head, "weight"):
        raise LayerRecordingError(f"{type(model).__name__}: no output embedding (unembedding) found")
    scale = float(getattr(cfg, "logit_scale", None) or 1.0)
    if getattr(cfg, "logits_scaling", None):
        scale /= float(cfg.logits_scaling)
    softcap = getattr(cfg, "final_logit_softcapping", None)
    return LensParts(blocks=blocks, norm=norm, weight=head.weight, bias=getattr(head, "bias", None),
                     scale=scale, softcap=float(softcap) if softcap else None,
                     names={"blocks": blocks_name, "norm": norm_name, "softcap": softcap, "scale": scale})


def lens_logits(h: torch.Tensor, parts: LensParts) -> torch.Tensor:
    """Logits of the lens for residual rows ``h`` [N, hidden] -> [N, vocab] (for checks)."""
    x = parts.norm(h) if parts.norm is not None else h
    z = nn.functional.linear(x, parts.weight, parts.bias).float()
    if parts.scale != 1.0:
        z = z * parts.scale
    if parts.softcap:
        z = torch.tanh(z / parts.softcap) * parts.softcap
    return z


def lens_entropy_rows(h: torch.Tensor, parts: LensParts, chunk: int | None = None,
                      vocab_block: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logit-lens entropy (nats, T=1) and top-1 id of residual rows ``h`` [N, hidden].

    ``chunk`` rows (LENS_ROWS) at a time go through the final norm, then the unembedding in
    blocks of ``vocab_block`` columns (:func:`lens_block_width`), each reduced as soon as it is
    formed, so at most three cache-sized [chunk x vocab_block] arrays exist (allocated once).
    A block of logits z gives its maximum m_b, Z_b = sum exp(z - m_b) and
    D_b = sum exp(z - m_b) (z - m_b), in five in-place or out= passes with one exponential
    (both sums in one);
    over blocks, with m = max m_b: Z = sum_b e^(m_b - m) Z_b,
    D = sum_b e^(m_b - m) (D_b + (m_b - m) Z_b), H = ln Z - D / Z. Every term of D has one
    sign (z <= m), so nothing cancels; the sums are torch's pairwise sums. The top-1 is the
    first maximum, as argmax gives it (:func:`_update_top1`).
    """
    n, vocab = h.shape[0], parts.weight.shape[0]
    dev = h.device                                        # every buffer where the model is
    ent = torch.empty(n, dtype=torch.float32, device=dev)
    top = torch.empty(n, dtype=torch.long, device=dev)
    if n == 0:
        return ent, top
    chunk = max(1, min(n, chunk or LENS_ROWS))
    width = min(vocab, vocab_block or lens_block_width(chunk))
    wt = parts.weight.float().T                           # [hidden, vocab], a view
    bias = parts.bias.float() if parts.bias is not None else None
    blocks = [(v0, wt[:, v0: v0 + width], None if bias is None else bias[v0: v0 + width])
              for v0 in range(0, vocab, width)]
    zbuf = torch.empty(chunk * width, dtype=torch.float32, device=dev)
    pbuf = torch.empty(2 * chunk * width, dtype=torch.float32, device=dev)
    # per block and row: maximum, normaliser, weighted shifted sum ([blocks, rows]: rows contiguous)
    stats = torch.empty(len(blocks), 3, chunk, dtype=torch.float32, device=dev)
    best = torch.empty(chunk, dtype=torch.float32, device=dev)
    views: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        r = e - s
        x = (parts.norm(h[s:e]) if parts.norm is not None else h[s:e]).float()
        m_b, z_b, d_b = stats[:, :, :r].unbind(1)
        for j, (v0, cols, b) in enumerate(blocks):
            shape = (r, cols.shape[1])
            if shape not in views:
                views[shape] = (zbuf[: r * shape[1]].view(shape), pbuf[: 2 * r * shape[1]].view(2, *shape))
            z, pd = views[shape]                          # pd: exp(z - m) and exp(z - m) (z - m)
            if b is None:
                torch.mm(x, cols, out=z)
            else:
                torch.addmm(b, x, cols, out=z)
            if parts.scale != 1.0:
                z.mul_(parts.scale)
            if parts.softcap:
                z.div_(parts.softcap).tanh_().mul_(parts.softcap)
            m = torch.amax(z, dim=-1, out=m_b[j])
            _update_top1(z, m, best[:r], top[s:e], v0, first=j == 0)
            torch.exp(z.sub_(m[:, None]), out=pd[0])
            torch.mul(pd[0], z, out=pd[1])
            torch.sum(pd, dim=-1, out=stats[j, 1:, :r])
        m = best[:r]                                      # = max over blocks of m_b
        gap = m_b - m                                     # <= 0
        weight = gap.exp()
        total = (weight * z_b).sum(0)
        dot = (weight * (d_b + gap * z_b)).sum(0)
        ent[s:e] = total.log() - dot / total
    return ent, top


def lens_block_width(chunk: int) -> int:
    """Vocabulary columns per block of lens logits for ``chunk`` rows: LENS_BLOCK_ELEMS
    float32 values, in whole multiples of LENS_COLS (at least one)."""
    return max(LENS_COLS, LENS_BLOCK_ELEMS // max(1, chunk) // LENS_COLS * LENS_COLS)


def _update_top1(z: torch.Tensor, m: torch.Tensor, best: torch.Tensor, top: torch.Tensor,
                 v0: int, first: bool) -> None:
    """Carry the running top-1 of each row over the block of logits ``z`` (columns from v0).

    ``best`` holds each row's largest logit so far and ``top`` its first column. An
    index-tracking max over every block costs several times the plain maximum ``m`` the
    entropy needs anyway, so only rows whose maximum grows in this block (strictly: an equal
    value in a later block is not the first) are searched, with argmax (first occurrence);
    after the first block these are few.
    """
    if first:
        torch.argmax(z, dim=-1, out=top)
        best.copy_(m)
        return
    rows = (m > best).nonzero().squeeze(1)
    if rows.numel():
        top[rows] = z.index_select(0, rows).argmax(dim=-1) + v0
        torch.maximum(best, m, out=best)


# --------------------------------------------------------------------------- attention


class AttentionRecorder:
    """Collects attention entropies from :func:`entropy_attention_forward`.

    Per layer: mean over heads [B, Tq] and the number of visible keys [B, Tq]; per head
    [B, H, Tq] for ``head_layer`` (0-based block index).
    """

    def __init__(self, head_layer: int | None = None, query_chunk: int | None = None):
        self.head_layer = head_layer
        self.query_chunk = query_chunk
        self.mean: dict[int, torch.Tensor] = {}
        self.visible: dict[int, torch.Tensor] = {}
        self.heads: torch.Tensor | None = None

    def normalised(self, layer: int) -> torch.Tensor:
        """Mean-over-heads entropy of ``layer`` divided by ln(visible keys); NaN where 1 key."""
        vis = self.visible[layer].double()
        with torch.no_grad():
            return torch.where(vis > 1, self.mean[layer].double() / vis.clamp(min=2).log(),
                               torch.full_like(vis, float("nan"))).float()


_RECORDER: contextvars.ContextVar[AttentionRecorder | None] = contextvars.ContextVar(
    "thinkscope_attention_recorder", default=None)


def entropy_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                              value: torch.Tensor, attention_mask: torch.Tensor | None,
                              scaling: float | None = None, dropout: float = 0.0,
                              softcap: float | None = None, **kwargs):
    """Attention that also records the entropy of every query's attention distribution.

    Same contract as transformers' attention functions: query [B, H, Tq, D], key/value
    [B, Hkv, Tk, D] (after rotary embedding and cache update; Hkv divides H for grouped-query
    attention), ``attention_mask`` None (plain causal), boolean [B|1, 1, Tq, Tk] (True =
    visible) or additive float; returns ([B, Tq, H, D], None). The scores are formed once:
    on CPU with no soft-cap and no additive mask, by torch's fused flash-attention kernel
    (:func:`_fused_attention`), otherwise, or when the recorder names a ``query_chunk``, in
    chunks of queries (:func:`_chunked_attention`).
    """
    if getattr(module, "sinks", None) is not None or kwargs.get("s_aux") is not None:
        raise LayerRecordingError("attention entropy does not support attention sinks")
    rec = _RECORDER.get()
    h, hkv = query.shape[1], key.shape[1]
    if h % hkv:
        raise LayerRecordingError(f"{h} query heads do not group over {hkv} key/value heads")
    scale = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
    causal = bool(kwargs.get("is_causal", getattr(module, "is_causal", True)))
    layer = getattr(module, "layer_idx", None)
    keep = rec is not None and layer is not None
    chunk = rec.query_chunk if rec is not None else None
    if chunk is None and _fused_applies(query, attention_mask, softcap, dropout if module.training else 0.0):
        out, ent, visible = _fused_attention(query, key, value, attention_mask, scale, causal)
    else:
        out, ent, visible = _chunked_attention(query, key, value, attention_mask, scale, causal,
                                               softcap, chunk, keep)
    if keep:
        # entropy lies in [0, ln(visible keys)]: clip float32 rounding, NaN where nothing is visible
        vis = visible[:, None, :]
        ent = torch.minimum(ent.clamp_(min=0), vis.clamp(min=1).log())
        ent = torch.where(vis > 0, ent, torch.full_like(ent, float("nan")))
        rec.mean[layer], rec.visible[layer] = ent.mean(dim=1), visible
        if layer == rec.head_layer:
            rec.heads = ent
    return out.transpose(1, 2).contiguous(), None


_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _fused_applies(query: torch.Tensor, attention_mask, softcap, dropout: float) -> bool:
    return (_FLASH_CPU is not None and query.device.type == "cpu" and not softcap and not dropout
            and (attention_mask is None or attention_mask.dtype == torch.bool))


def _visible_keys(attention_mask, b: int, tq: int, tk: int, causal: bool, device) -> torch.Tensor:
    """Number of keys each query sees [B, Tq] (float32): the mask's True entries, causally cut."""
    offset = tk - tq  # queries are the last tq positions (cache prefix before them)
    q_pos = offset + torch.arange(tq, device=device)
    if attention_mask is None:
        n = (q_pos + 1).clamp(max=tk) if causal else torch.full_like(q_pos, tk)
        return n.to(torch.float32).expand(b, tq).clone()
    allowed = attention_mask[:, 0, :, :tk]
    if causal:
        allowed = allowed & (torch.arange(tk, device=device)[None, :] <= q_pos[:, None])
    return allowed.sum(-1, dtype=torch.float32).expand(b, tq).clone()


def _fused_attention(query, key, value, attention_mask, scale: float, causal: bool):
    """Output and entropies from one call of torch's CPU flash-attention kernel.

    H = logsumexp_j(s_j) - sum_j p_j s_j, and with s_j = scale * q . k_j the weighted score
    sum is scale * q . (sum_j p_j k_j): attending over [v | k] instead of v yields it next to
    the output, and the kernel returns the logsumexp. Queries and keys get zero columns to
    match that width (the kernel wants one head size), which leaves the scores unchanged.
    The kernel keeps a running max, normaliser and weighted sums over blocks of keys (online
    softmax), so scores exist a block at a time and blocks above the causal diagonal are
    skipped. Against float64 the entropies are within ~1e-5 nats on SmolLM2-135M.
    """
    b, h, tq, d = query.shape
    tk, dv = key.shape[2], value.shape[-1]
    q, k, v = query.float(), key.float(), value.float()
    qp = torch.cat([q, q.new_zeros(b, h, tq, dv)], dim=-1)
    kp = torch.cat([k, k.new_zeros(k.shape[:-1] + (dv,))], dim=-1)
    vk = torch.cat([v, k], dim=-1)
    # the kernel's causal mask is aligned top-left, which is right only without a cache prefix
    kernel_causal = causal and tq == tk
    allowed = _allowed(attention_mask, tq, tk, causal and not kernel_causal, q.device)
    mask = None
    if allowed is not None:
        # finite, not -inf: a query that sees nothing (padding) gets finite values, as in eager
        mask = torch.zeros(allowed.shape, dtype=torch.float32, device=q.device)
        mask.masked_fill_(~allowed, torch.finfo(torch.float32).min)
    out, lse = _FLASH_CPU(qp, kp, vk, 0.0, kernel_causal, attn_mask=mask, scale=scale)
    ent = lse - scale * (q * out[..., dv:]).sum(-1)          # [B, H, Tq], nats
    return out[..., :dv].to(query.dtype), ent, _visible_keys(allowed, b, tq, tk, causal, q.device)


def _allowed(attention_mask, tq: int, tk: int, causal: bool, device) -> torch.Tensor | None:
    """Boolean [B|1, 1, Tq, Tk] visibility from the mask and (if ``causal``) the causal cut;
    None when every key is visible."""
    allowed = attention_mask[..., :tk] if attention_mask is not None else None
    if causal and tq > 1:
        q_pos = (tk - tq) + torch.arange(tq, device=device)
        below = torch.arange(tk, device=device)[None, :] <= q_pos[:, None]
        allowed = below[None, None] if allowed is None else allowed & below
    return allowed


def _visible_keys(allowed, b: int, tq: int, tk: int, causal: bool, device) -> torch.Tensor:
    """Number of keys each query sees, [B, Tq] float32."""
    if allowed is None:
        q_pos = (tk - tq) + torch.arange(tq, device=device)
        n = (q_pos + 1).clamp(max=tk) if causal else torch.full_like(q_pos, tk)
    else:
        if causal:
            allowed = _allowed(allowed, tq, tk, True, device)
        n = allowed.sum(-1, dtype=torch.float32)[:, 0]
    return n.to(torch.float32).expand(b, tq).clone()


def _chunked_attention(query, key, value, attention_mask, scale: float, causal: bool,
                       softcap: float | None, chunk: int | None, keep: bool):
    """Output, entropies and visible keys, computing the scores one chunk of queries at a time.

    For what the fused kernel does not cover (soft-capped scores, additive float masks,
    other devices). At most [B, H, chunk, Tk] scores exist at once, keys past the chunk's
    last query are never touched (causal), and the output comes from the same probabilities
    (p @ v), so the entropies cost one pass over the scores, not a second attention.
    """
    b, h, tq, d = query.shape
    hkv, tk = key.shape[1], key.shape[2]
    g = h // hkv
    offset = tk - tq
    chunk = chunk or max(8, ATTN_CHUNK_BYTES // (4 * b * h * max(tk, 1)))
    out = query.new_empty(b, h, tq, value.shape[-1])
    ent = torch.empty(b, h, tq, dtype=torch.float32, device=query.device) if keep else None
    visible = torch.empty(b, tq, dtype=torch.float32, device=query.device)
    neg = torch.finfo(torch.float32).min
    key_pos = torch.arange(tk, device=query.device)
    for s in range(0, tq, chunk):
        e = min(s + chunk, tq)
        n = e - s
        kend = offset + e if causal else tk
        q = query[:, :, s:e].reshape(b, hkv, g * n, d)
        scores = torch.matmul(q.float(), key[:, :, :kend].float().transpose(-1, -2))
        scores = scores.view(b, h, n, kend).mul_(scale)
        if softcap:
            scores.div_(softcap).tanh_().mul_(softcap)
        if attention_mask is None:
            allowed = key_pos[None, :kend] <= (offset + torch.arange(s, e, device=query.device))[:, None]
            allowed = allowed[None, None]
        elif attention_mask.dtype == torch.bool:
            allowed = attention_mask[:, :, s:e, :kend]
        else:  # additive float mask (eager style): large negative values mean hidden
            part = attention_mask[:, :, s:e, :kend].float()
            scores.add_(part)
            allowed = part > neg / 2
        # a finite fill keeps 0 * fill = 0 below (with -inf it would be NaN)
        scores.masked_fill_(~allowed, neg)
        m = scores.amax(dim=-1, keepdim=True)
        scores.sub_(m)
        p = torch.exp(scores)
        total = p.sum(-1)                                        # [b, h, n]
        o = torch.matmul(p.view(b, hkv, g * n, kend), value[:, :, :kend].float())
        out[:, :, s:e] = (o.view(b, h, n, -1) / total[..., None]).to(out.dtype)
        if keep:
            dot = torch.matmul(p.unsqueeze(-2), scores.unsqueeze(-1)).view(b, h, n)
            ent[:, :, s:e] = total.log() - dot / total
        visible[:, s:e] = allowed.sum(-1, dtype=torch.float32).expand(b, -1, n)[:, 0]
        del scores, p
    return out, ent, visible


def register_attention() -> str:
    """Register the entropy-recording attention (and sdpa's mask builder) under ATTENTION_NAME."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION_NAME, entropy_attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
    return ATTENTION_NAME


@contextlib.contextmanager
def recording_attention(model, recorder: AttentionRecorder) -> Iterator[AttentionRecorder]:
    """Run ``model`` with the entropy-recording attention; restore its own afterwards."""
    register_attention()
    before = model.config._attn_implementation
    token = _RECORDER.set(recorder)
    try:
        model.set_attn_implementation(ATTENTION_NAME)
        if model.config._attn_implementation != ATTENTION_NAME:
            raise LayerRecordingError(f"{type(model).__name__} does not accept a custom attention "
                                      "function (transformers AttentionInterface)")
        yield recorder
    finally:
        _RECORDER.reset(token)
        if before and model.config._attn_implementation != before:
            model.set_attn_implementation(before)


# --------------------------------------------------------------------------- one pass


@dataclass
class LayerRecord:
    """Per-token layer arrays of one trace (rows = completion tokens) and what they cover."""

    arrays: dict[str, np.ndarray]   # lens_entropy/lens_top1 [T, len(lens_layers)], attn_* [T, L], attn_head_entropy [T, H]
    info: dict                      # lens_layers, attn_layers, head_layer (1-based), n_layers, lens_check


def _block_output(output) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


@torch.inference_mode()
def record_layers(model, prompt_ids: Sequence[int], completion_ids: Sequence[int],
                  options: LayerOptions, parts: LensParts | None = None,
                  lens_chunk: int | None = None, query_chunk: int | None = None) -> LayerRecord:
    """One forward pass over prompt + completion that records the per-layer arrays.

    Row i belongs to completion token i and is read at position len(prompt) - 1 + i (the
    position whose output predicted token i); a row with no such position (empty prompt,
    first token) is NaN. Entropies in nats; lens at temperature 1. Raises
    LayerRecordingError when the lens of the last layer does not reproduce the model's
    logits (a final norm, unembedding or soft-cap that was not found).
    """
    if not options.enabled:
        raise LayerRecordingError("neither the logit lens nor attention entropy was asked for")
    parts = parts or find_lens_parts(model)
    n_layers = parts.n_layers
    ids = [int(i) for i in prompt_ids] + [int(i) for i in completion_ids]
    n_prompt, n = len(prompt_ids), len(completion_ids)
    # the last completion token predicts nothing we keep, so the pass stops one short
    inputs = ids[: max(n_prompt + n - 1, 0)]
    rows = np.arange(n) + n_prompt - 1
    valid = rows >= 0
    dev = parts.weight.device
    pos = torch.as_tensor(rows[valid], dtype=torch.long, device=dev)
    info: dict = {"n_layers": n_layers}
    arrays: dict[str, np.ndarray] = {}
    if n == 0 or not inputs:
        return _empty_record(options, n_layers, n, info)

    kept = lens_layers(n_layers, options.lens_every) if options.logit_lens else []
    lens_ent = torch.full((n, len(kept)), float("nan"), device=dev)
    lens_top = torch.full((n, len(kept)), -1, dtype=torch.long, device=dev)
    valid_t = torch.as_tensor(valid, device=dev)
    last_h: dict[str, torch.Tensor] = {}
    hooks = []

    def make_hook(col: int, layer: int):
        def hook(_module, _args, output):
            hs = _block_output(output)[0]           # [T, hidden], batch of one
            e, t = lens_entropy_rows(hs.index_select(0, pos), parts, lens_chunk)
            lens_ent[valid_t, col] = e
            lens_top[valid_t, col] = t
            if layer == n_layers:
                last_h["h"] = hs[-1:].clone()
        return hook

    for col, layer in enumerate(kept):
        hooks.append(parts.blocks[layer - 1].register_forward_hook(make_hook(col, layer)))
    head_layer = resolve_head_layer(n_layers, options.head_layer) if options.attention_entropy else None
    recorder = AttentionRecorder(head_layer - 1 if head_layer else None, query_chunk)
    ctx = recording_attention(model, recorder) if options.attention_entropy else contextlib.nullcontext()
    try:
        with ctx:
            x = torch.tensor([inputs], device=dev)
            try:
                out = model(input_ids=x, use_cache=False, logits_to_keep=1)
            except TypeError:  # a model without logits_to_keep computes every position's logits
                out = model(input_ids=x, use_cache=False)
    finally:
        for hk in hooks:
            hk.remove()

    if options.logit_lens:
        got = lens_logits(last_h["h"], parts)[0]
        want = out.logits[0, -1].float()
        err = float((got - want).abs().max())
        tol = 1e-3 * (1.0 + float(want.abs().max()))
        if not err <= tol:
            raise LayerRecordingError(
                f"{type(model).__name__}: the logit lens of the last layer differs from the model's "
                f"logits by {err:.3g} (found norm={parts.names.get('norm')}, softcap={parts.softcap}, "
                f"scale={parts.scale}); this model's head is not understood")
        arrays["lens_entropy"] = lens_ent.cpu().numpy().astype(np.float32)
        arrays["lens_top1"] = lens_top.cpu().numpy().astype(np.int64)
        info.update(lens_layers=kept, lens_check_max_abs=err)
    if options.attention_entropy:
        missing = [i for i in range(n_layers) if i not in recorder.mean]
        if missing:
            raise LayerRecordingError(f"{type(model).__name__}: attention of layers {missing[:5]} did not "
                                      "go through the registered attention function")
        mean = torch.stack([recorder.mean[i][0] for i in range(n_layers)], dim=1)       # [T_in, L]
        norm = torch.stack([recorder.normalised(i)[0] for i in range(n_layers)], dim=1)
        heads = recorder.heads[0].T                                                     # [T_in, H]
        arrays["attn_entropy"] = _rows(mean, pos, valid, n)
        arrays["attn_entropy_norm"] = _rows(norm, pos, valid, n)
        arrays["attn_head_entropy"] = _rows(heads, pos, valid, n)
        info.update(attn_layers=list(range(1, n_layers + 1)), head_layer=head_layer,
                    n_heads=int(heads.shape[1]))
    return LayerRecord(arrays, info)


def _rows(values: torch.Tensor, pos: torch.Tensor, valid: np.ndarray, n: int) -> np.ndarray:
    out = np.full((n, values.shape[1]), np.nan, dtype=np.float32)
    out[valid] = values.index_select(0, pos).float().cpu().numpy()
    return out


def _empty_record(options: LayerOptions, n_layers: int, n: int, info: dict) -> LayerRecord:
    arrays: dict[str, np.ndarray] = {}
    if options.logit_lens:
        kept = lens_layers(n_layers, options.lens_every)
        arrays["lens_entropy"] = np.full((n, len(kept)), np.nan, np.float32)
        arrays["lens_top1"] = np.full((n, len(kept)), -1, np.int64)
        info["lens_layers"] = kept
    if options.attention_entropy:
        for k in ("attn_entropy", "attn_entropy_norm"):
            arrays[k] = np.full((n, n_layers), np.nan, np.float32)
        info.update(attn_layers=list(range(1, n_layers + 1)),
                    head_layer=resolve_head_layer(n_layers, options.head_layer))
    return LayerRecord(arrays, info)


def attach_layers(model, trace, prompt_ids: Sequence[int], options: LayerOptions,
                  parts: LensParts | None = None) -> None:
    """Record the layer arrays of ``trace`` (its token_ids after ``prompt_ids``) into it.

    Sets ``trace.layers`` and ``trace.metadata['layer_info']`` (which layers each array
    covers), which the store keeps with the trace.
    """
    rec = record_layers(model, prompt_ids, trace.token_ids, options, parts)
    trace.layers = rec.arrays
    trace.metadata["layer_info"] = {k: v for k, v in rec.info.items() if k != "lens_check_max_abs"}


# --------------------------------------------------------------------------- references


def uniform_attention_entropy(t: np.ndarray | int) -> np.ndarray:
    """Entropy (nats) of uniform attention over the t+1 positions visible to query t: ln(t+1)."""
    return np.log(np.asarray(t, dtype=np.float64) + 1.0)


def naive_layers(model, prompt_ids: Sequence[int], completion_ids: Sequence[int],
                 kept: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """The straightforward reference: everything materialised, then reduced.

    Runs the model with eager attention, ``output_hidden_states`` and ``output_attentions``,
    builds the full [layers, T, vocab] lens logits (the last layer from the model's logits,
    whose hidden state already has the final norm) and [layers, heads, T, T] attention maps,
    and only then takes entropies. For tests and the benchmark; memory grows as T^2 and
    T x vocab, which is what :func:`record_layers` avoids.
    """
    parts = find_lens_parts(model)
    n_layers = parts.n_layers
    kept = list(kept or range(1, n_layers + 1))
    ids = [int(i) for i in prompt_ids] + [int(i) for i in completion_ids]
    n_prompt, n = len(prompt_ids), len(completion_ids)
    x = torch.tensor([ids[: n_prompt + n - 1]])
    before = model.config._attn_implementation
    with torch.inference_mode():
        try:
            model.set_attn_implementation("eager")
            out = model(input_ids=x, use_cache=False, output_hidden_states=True, output_attentions=True)
        finally:
            model.set_attn_implementation(before)
        hs = out.hidden_states
        logits = torch.stack([out.logits[0] if l == n_layers else lens_logits(hs[l][0], parts)
                              for l in kept])                            # [L', T, V]
        logp = torch.log_softmax(logits, dim=-1)
        lens = -(logp.exp() * logp).sum(-1)                              # [L', T]
        att = torch.stack([a[0] for a in out.attentions])               # [L, H, T, T]
        plogp = torch.where(att > 0, att * att.clamp_min(1e-45).log(), torch.zeros(()))
        attn = -plogp.sum(-1)                                            # [L, H, T]
    rows = np.arange(n) + n_prompt - 1
    t = np.arange(x.shape[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = attn.mean(1).numpy() / np.where(t > 0, np.log(t + 1.0), np.nan)
    return {"lens_entropy": lens.numpy().T[rows], "lens_top1": logits.argmax(-1).numpy().T[rows],
            "attn_entropy": attn.mean(1).numpy().T[rows], "attn_entropy_norm": norm.T[rows],
            "attn_heads": attn.numpy()}


# the analysis of records needs no torch: it lives in layer_stats, for the dashboard's sake
from .layer_stats import SPLIT_LABELS, difficulty_bins, profile_groups, split_anchors_explorers  # noqa: E402,F401
