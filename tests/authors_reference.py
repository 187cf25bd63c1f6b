"""The authors' formulation of the clip backend's raw maps, written out independently of the library.

Everything is computed the long way, as the authors' open_clip fork does it and as
``tests/fixtures/golden/clip_public/README.md`` (step 3) describes: a forward pass
through ALL blocks of the image tower, each block computing its attention
explicitly and materialising the per-head, per-source contribution of every
source to every query (``[B, heads, n, n, head_dim]``); at block ``layer_index``
the [CLS] query's contributions are mapped through out_proj head by head, and
both they and the patch tokens of the residual stream are scored through ln_post
(with the final [CLS] token's statistics), ``proj`` and the image embedding's
norm, then dotted with the text vector. Nothing is folded or skipped, so it
agrees with the library (which stops after block ``layer_index`` and never forms
the per-source vectors) only if the shortcuts of ``docs/method.md`` (step 5) hold.

Used by ``tests/test_clip_reference.py`` (against the golden raw maps and the
clip backend at every block) and by ``scripts/bench_clip.py`` (the speed of this
formulation against the library's).
"""

import torch
import torch.nn.functional as F


def explicit_block(block, x: torch.Tensor, keep_cls_sources: bool):
    """One residual attention block of open_clip with its attention spelled out.

    Returns the block output and, if asked, the [CLS] query's contribution of
    every (head, source) pair mapped through out_proj: ``[B, heads, n, D]``.
    """
    attn = block.attn
    batch, n, width = x.shape
    heads = attn.num_heads
    head_dim = width // heads
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.view(batch, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    probs = torch.softmax((q * head_dim ** -0.5) @ k.transpose(-1, -2), dim=-1)  # [B, heads, n, n]
    per_source = torch.einsum("bhnm,bhmc->bhnmc", probs, v)  # every query, head and source
    heads_out = per_source.sum(3).transpose(1, 2).reshape(batch, n, width)
    out = x + block.ls_1(attn.out_proj(heads_out))
    out = out + block.ls_2(block.mlp(block.ln_2(out)))
    cls_sources = None
    if keep_cls_sources:
        out_weight = attn.out_proj.weight.view(width, heads, head_dim)
        cls_sources = torch.einsum("bhmc,dhc->bhmd", per_source[:, :, 0], out_weight)
    return out, cls_sources


def reference_raw_maps(visual, pixels: torch.Tensor, text: torch.Tensor, layer_index: int):
    """Attention and token maps ``[B, G*G]`` scored as the authors' code does, after a full forward pass.

    Args:
        visual: an open_clip ``VisionTransformer`` (``model.visual``).
        pixels: ``[B, 3, S, S]``, the model's preprocessed input.
        text: ``[B, E]``, the L2-normalised text embeddings, one per image.
        layer_index: the 0-based block whose attention and output are read.

    ln_post is applied as a linear map with the statistics of the final [CLS]
    token; each of the ``parts`` vectors that sum to that token takes ``1/parts``
    of its mean and bias (the golden README's ``K``).
    """
    blocks = visual.transformer.resblocks
    x = visual._embeds(pixels)
    for index, block in enumerate(blocks):
        x, cls_sources = explicit_block(block, x, keep_cls_sources=index == layer_index)
        if cls_sources is not None:
            n = x.shape[1]
            sources = block.ls_1(cls_sources.sum(1) + block.attn.out_proj.bias / n)[:, 1:]
            patch_tokens = x[:, 1:]
    ln_post = visual.ln_post
    final_cls = x[:, 0]
    mean = final_cls.mean(-1)[:, None, None]
    std = torch.sqrt(final_cls.var(-1, unbiased=False) + ln_post.eps)[:, None, None]
    norm = (ln_post(final_cls) @ visual.proj).norm(dim=-1)[:, None, None]
    parts = 2 * len(blocks) - 1

    def score(vectors: torch.Tensor, share: int) -> torch.Tensor:
        normed = (vectors - mean / share) / std * ln_post.weight + ln_post.bias / share
        return ((normed @ visual.proj / norm).float() * text[:, None]).sum(-1)

    return score(sources, parts * n), score(patch_tokens, parts)
