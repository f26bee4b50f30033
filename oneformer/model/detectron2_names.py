"""Detectron2's OneFormer names (SHI-Labs, TAO) as transformers' and back, and the spec's model keys read off a state
dict's shapes.

Key conversion, Detectron2 (SHI-Labs, TAO) -> transformers, by prefix (RENAMES, FUSED; the Swin backbone through
oneformer.model.swin_names.from_original):

    backbone.*                                    model.pixel_level_module.encoder.{swin.*, hidden_states_norms.*}
      layers.i.blocks.j.attn.qkv                    ...attention.{q,k,v}_proj (split in three)
    sem_seg_head.pixel_decoder.*                  model.pixel_level_module.decoder.*
      adapter_i / layer_i (.norm)                   adapter_i.0 / layer_i.0 (.1: the GroupNorm)
      input_proj.i, mask_features                   input_projections.i, mask_projection
      transformer.level_embed                       level_embed
      transformer.encoder.layers.i.{self_attn, norm1, linear1, linear2, norm2}
                                                    encoder.layers.i.{self_attn, self_attn_layer_norm, fc1, fc2,
                                                    final_layer_norm}
    sem_seg_head.predictor.*                      model.transformer_module.*
      query_embed, level_embed                      queries_embedder, level_embed
      decoder_norm, class_input_proj, class_embed   decoder.{decoder_norm, query_input_projection, class_embed}
      mask_embed.layers.i                           decoder.mask_embed.layers.i.0
      class_transformer.decoder.*                   decoder.query_transformer.decoder.*
      transformer_cross_attention_layers.i          decoder.layers.i.cross_attn (nn.MultiheadAttention in both)
      transformer_self_attention_layers.i           decoder.layers.i.self_attn (in_proj split into q/k/v_proj)
      transformer_ffn_layers.i                      decoder.layers.i.ffn
    task_mlp.layers.i                             model.task_encoder.task_mlp.layers.i.0
    text_encoder.transformer.resblocks.i.{attn, ln_1, ln_2, mlp.c_fc, mlp.c_proj}
                                                  model.text_mapper.text_encoder.transformer.layers.i.{self_attn,
                                                  layer_norm1, layer_norm2, mlp.fc1, mlp.fc2}
    text_encoder.{positional_embedding, token_embedding, ln_final}   model.text_mapper.text_encoder.*
    text_projector.layers.i                       model.text_mapper.text_projector.layers.i.0
    prompt_ctx                                    model.text_mapper.prompt_ctx
    criterion.logit_scale                         criterion.logit_scale

TAO's Lightning checkpoints hold the same names under "model."; transformers-named files load as they are.
"""

from __future__ import annotations

import collections
import functools
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from oneformer.model.swin_names import from_original
from oneformer.spec import ExperimentSpec

# ----------------------------------------------------------------------------- Detectron2 <-> transformers
ENCODER = "model.pixel_level_module.encoder."
PIXEL = "sem_seg_head.pixel_decoder."
PREDICTOR = "sem_seg_head.predictor."
DECODER = "model.pixel_level_module.decoder."
MODULE = "model.transformer_module."
TEXT = "model.text_mapper."
RESBLOCK = "text_encoder.transformer.resblocks.{a}."
TEXT_LAYER = TEXT + "text_encoder.transformer.layers.{a}."

# (Detectron2 name, transformers name) templates, most specific first: {a} is a layer index, a template ending in "."
# a prefix (the rest of the name is kept), any other one a whole name. Read by both directions.
RENAMES: list[tuple[str, str]] = [
    # pixel decoder: FPN lateral (adapter) and output (layer) convs with their GroupNorm, input projections of the
    # multi-scale deformable-attention encoder, its layers, the mask features
    (PIXEL + "adapter_{a}.norm.", DECODER + "adapter_{a}.1."),
    (PIXEL + "adapter_{a}.", DECODER + "adapter_{a}.0."),
    (PIXEL + "layer_{a}.norm.", DECODER + "layer_{a}.1."),
    (PIXEL + "layer_{a}.", DECODER + "layer_{a}.0."),
    (PIXEL + "input_proj.{a}.", DECODER + "input_projections.{a}."),
    (PIXEL + "transformer.level_embed", DECODER + "level_embed"),
    (PIXEL + "transformer.encoder.layers.{a}.self_attn.", DECODER + "encoder.layers.{a}.self_attn."),
    (PIXEL + "transformer.encoder.layers.{a}.norm1.", DECODER + "encoder.layers.{a}.self_attn_layer_norm."),
    (PIXEL + "transformer.encoder.layers.{a}.linear1.", DECODER + "encoder.layers.{a}.fc1."),
    (PIXEL + "transformer.encoder.layers.{a}.linear2.", DECODER + "encoder.layers.{a}.fc2."),
    (PIXEL + "transformer.encoder.layers.{a}.norm2.", DECODER + "encoder.layers.{a}.final_layer_norm."),
    (PIXEL + "mask_features.", DECODER + "mask_projection."),
    # transformer decoder: queries, the task-conditioned class transformer, the masked-attention layers, the heads
    (PREDICTOR + "query_embed.", MODULE + "queries_embedder."),
    (PREDICTOR + "level_embed.", MODULE + "level_embed."),
    (PREDICTOR + "decoder_norm.", MODULE + "decoder.decoder_norm."),
    (PREDICTOR + "class_input_proj.", MODULE + "decoder.query_input_projection."),
    (PREDICTOR + "class_embed.", MODULE + "decoder.class_embed."),
    (PREDICTOR + "mask_embed.layers.{a}.", MODULE + "decoder.mask_embed.layers.{a}.0."),
    (PREDICTOR + "class_transformer.decoder.", MODULE + "decoder.query_transformer.decoder."),
    (PREDICTOR + "transformer_cross_attention_layers.{a}.", MODULE + "decoder.layers.{a}.cross_attn."),
    (PREDICTOR + "transformer_self_attention_layers.{a}.self_attn.",  # out_proj; in_proj is FUSED
     MODULE + "decoder.layers.{a}.self_attn.self_attn."),
    (PREDICTOR + "transformer_self_attention_layers.{a}.", MODULE + "decoder.layers.{a}.self_attn."),
    (PREDICTOR + "transformer_ffn_layers.{a}.", MODULE + "decoder.layers.{a}.ffn."),
    # task MLP, and the text mapper (CLIP-style text encoder, projector, learned context) training uses
    ("task_mlp.layers.{a}.", "model.task_encoder.task_mlp.layers.{a}.0."),
    (RESBLOCK + "attn.", TEXT_LAYER + "self_attn."),
    (RESBLOCK + "ln_1.", TEXT_LAYER + "layer_norm1."),
    (RESBLOCK + "ln_2.", TEXT_LAYER + "layer_norm2."),
    (RESBLOCK + "mlp.c_fc.", TEXT_LAYER + "mlp.fc1."),
    (RESBLOCK + "mlp.c_proj.", TEXT_LAYER + "mlp.fc2."),
    ("text_encoder.positional_embedding", TEXT + "text_encoder.positional_embedding"),
    ("text_encoder.token_embedding.", TEXT + "text_encoder.token_embedding."),
    ("text_encoder.ln_final.", TEXT + "text_encoder.ln_final."),
    ("text_projector.layers.{a}.", TEXT + "text_projector.layers.{a}.0."),
    ("prompt_ctx.", TEXT + "prompt_ctx."),
    ("criterion.", "criterion."),  # logit_scale (learned); empty_weight is the spec's (SPEC_SET)
]
SWIN_LAYER = ENCODER + "swin.encoder.layers.{a}."
# Fused in Detectron2, three tensors in transformers ({kind}: weight or bias; {part}: q, k, v, in that order)
FUSED: list[tuple[str, str]] = [
    (PREDICTOR + "transformer_self_attention_layers.{a}.self_attn.in_proj_{kind}",
     MODULE + "decoder.layers.{a}.self_attn.self_attn.{part}_proj.{kind}"),
    ("backbone.layers.{a}.blocks.{b}.attn.qkv.{kind}", SWIN_LAYER + "blocks.{b}.attention.{part}_proj.{kind}"),
]
# The way back of oneformer.model.swin_names.from_original (which converts the Swin backbone forwards)
SWIN_TO_DETECTRON2: list[tuple[str, str]] = [
    ("backbone.patch_embed.proj.", ENCODER + "swin.embeddings.patch_embeddings.projection."),
    ("backbone.patch_embed.norm.", ENCODER + "swin.embeddings.norm."),
    ("backbone.layers.{a}.blocks.{b}.norm1.", SWIN_LAYER + "blocks.{b}.layernorm_before."),
    ("backbone.layers.{a}.blocks.{b}.norm2.", SWIN_LAYER + "blocks.{b}.layernorm_after."),
    ("backbone.layers.{a}.blocks.{b}.attn.proj.", SWIN_LAYER + "blocks.{b}.attention.o_proj."),
    ("backbone.layers.{a}.blocks.{b}.attn.relative_position_bias_table",
     SWIN_LAYER + "blocks.{b}.attention.relative_position_bias.relative_position_bias_table"),
    ("backbone.layers.{a}.blocks.{b}.mlp.", SWIN_LAYER + "blocks.{b}.mlp."),
    ("backbone.layers.{a}.downsample.", SWIN_LAYER + "downsample."),
]
STAGE_NORM = re.compile(re.escape(ENCODER) + r"hidden_states_norms\.stage(\d+)\.")  # Detectron2's norm<stage - 1>
# Detectron2 names dropped on purpose, and why
IGNORED = [
    (re.compile(r"^backbone\.layers\.\d+\.blocks\.\d+\.attn\.relative_position_index$"),
     "a buffer transformers computes itself"),
    (re.compile(r"^pixel_(mean|std)$"), "the spec's dataset.pixel_mean / pixel_std normalize the input"),
    (re.compile(r"^sem_seg_head\.predictor\.class_transformer\.encoder\.norm\."),
     "the class transformer's encoder has no layers, and transformers builds none"),
]
ALIASES = [("backbone.post_norm.", "backbone.norm.")]  # TAO's backbone_v2 Swin names its final norm post_norm
SPEC_SET = ("criterion.empty_weight",)  # network tensors the spec sets (model.one_former.no_object_weight)
# network tensors a Detectron2 file has no counterpart of and that nothing reads (SwinModel's final norm: the
# backbone's feature maps go through hidden_states_norms); initialized like the rest, not reported as missing
UNUSED = re.compile(re.escape(ENCODER) + r"swin\.layernorm\.")

_FIELDS = {"a": r"\d+", "b": r"\d+", "kind": r"weight|bias", "part": r"[qkv]"}


@functools.cache
def _pattern(template: str) -> re.Pattern[str]:
    """A template as a regular expression: its fields as named groups, a whole name unless it ends in '.'."""
    rx = re.escape(template)
    for name, field_rx in _FIELDS.items():
        rx = rx.replace(re.escape("{" + name + "}"), f"(?P<{name}>{field_rx})")
    return re.compile(rx if template.endswith(".") else rx + "$")


def _rename(name: str, rules: list[tuple[str, str]], backwards: bool = False) -> str | None:
    """`name` renamed by the first rule whose source template matches it (rules read right to left `backwards`)."""
    for detectron2, transformers in rules:
        source, target = (transformers, detectron2) if backwards else (detectron2, transformers)
        if match := _pattern(source).match(name):
            return target.format(**match.groupdict()) + name[match.end():]
    return None


def _split(name: str, value: torch.Tensor) -> dict[str, torch.Tensor]:
    """A fused q/k/v tensor of Detectron2's as transformers' three (empty when `name` is not one)."""
    for detectron2, transformers in FUSED:
        if (match := _pattern(detectron2).match(name)) and value.shape[0] % 3 == 0:
            return {transformers.format(part=part, **match.groupdict()): chunk
                    for part, chunk in zip("qkv", value.chunk(3, dim=0))}
    return {}


@dataclass
class Converted:
    """A state dict in transformers' names, with where each tensor came from and what had no place."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    source: dict[str, str] = field(default_factory=dict)  # transformers name -> the file's name
    unmapped: list[str] = field(default_factory=list)  # the file's names no rule renames
    ignored: list[str] = field(default_factory=list)  # the file's names dropped on purpose (IGNORED, SPEC_SET)


def from_detectron2(state: dict[str, torch.Tensor]) -> Converted:
    """Detectron2 (SHI-Labs, TAO) OneFormer names as transformers', fused q/k/v split; the Swin backbone through
    oneformer.model.swin_names.from_original."""
    out = Converted()
    for name, value in state.items():
        if any(rx.search(name) for rx, _ in IGNORED):
            out.ignored.append(name)
            continue
        if name.startswith("backbone."):
            alias = next((new + name[len(old):] for old, new in ALIASES if name.startswith(old)), name)
            renamed = {ENCODER + k: v for k, v in from_original({alias: value}).items()}
        elif not (renamed := _split(name, value)):
            new = _rename(name, RENAMES)
            renamed = {new: value} if new else {}
        if not renamed:
            out.unmapped.append(name)
        for new, tensor in renamed.items():
            out.tensors[new], out.source[new] = tensor, name
    return out


def to_detectron2(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' names as Detectron2's (q/k/v fused again): the inverse of from_detectron2, for writing test
    files. SwinModel's final norm is left out, as Detectron2's Swin has none."""
    out: dict[str, torch.Tensor] = {}
    parts: dict[str, dict[str, torch.Tensor]] = collections.defaultdict(dict)
    for name, value in state.items():
        if UNUSED.match(name):
            continue
        fused = next(((d2, m) for d2, hf in FUSED if (m := _pattern(hf).match(name))), None)
        if fused:
            d2, match = fused
            groups = {k: v for k, v in match.groupdict().items() if k != "part"}
            parts[d2.format(**groups)][match["part"]] = value
            continue
        if stage := STAGE_NORM.match(name):
            out[f"backbone.norm{int(stage[1]) - 1}.{name[stage.end():]}"] = value
            continue
        new = _rename(name, SWIN_TO_DETECTRON2 + RENAMES, backwards=True)
        if new is None:
            raise KeyError(f"{name} has no Detectron2 name")
        out[new] = value
    for name, qkv in parts.items():
        out[name] = torch.cat([qkv[p] for p in "qkv"])
    return out


# ----------------------------------------------------------------------------- the spec's keys, read off the weights
SWIN = ENCODER + "swin."


def _layers(names: list[str], prefix: str) -> int:
    """How many numbered layers follow `prefix` (0 when none)."""
    rx = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m[1]) for n in names if (m := rx.match(n))}
    return max(found) + 1 if found else 0


def infer_model(shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """The spec's model keys as a transformers-named state dict's shapes and layer counts show them (only those it
    shows: a file without the text mapper says nothing of model.text_encoder)."""
    names, out = list(shapes), {}
    if s := shapes.get(SWIN + "embeddings.patch_embeddings.projection.weight"):
        out["model.backbone.swin.embed_dim"], out["model.backbone.swin.patch_size"] = s[0], s[-1]
    stages = _layers(names, SWIN + "encoder.layers.")
    depths = [_layers(names, f"{SWIN}encoder.layers.{i}.blocks.") for i in range(stages)]
    if stages and all(depths):
        out["model.backbone.swin.depths"] = depths
        table = "blocks.0.attention.relative_position_bias.relative_position_bias_table"
        tables = [shapes.get(f"{SWIN}encoder.layers.{i}.{table}") for i in range(stages)]
        if all(tables):
            out["model.backbone.swin.num_heads"] = [t[1] for t in tables]
            out["model.backbone.swin.window_size"] = (math.isqrt(tables[0][0]) + 1) // 2  # (2w - 1)^2 offsets
        if fc1 := shapes.get(f"{SWIN}encoder.layers.0.blocks.0.mlp.fc1.weight"):
            out["model.backbone.swin.mlp_ratio"] = fc1[0] / fc1[1]
    norms = sorted({int(m[1]) - 1 for n in names if (m := STAGE_NORM.match(n))})
    if norms:
        out["model.backbone.swin.out_indices"] = norms
    if s := shapes.get(MODULE + "decoder.class_embed.weight"):
        out["model.sem_seg_head.num_classes"] = s[0] - 1  # + the no-object class
    if s := shapes.get(MODULE + "queries_embedder.weight"):
        out["model.one_former.num_object_queries"], out["model.one_former.hidden_dim"] = s
    if n := _layers(names, MODULE + "decoder.layers."):
        out["model.one_former.dec_layers"] = n + 1  # the learned queries count as the first
    if s := shapes.get(MODULE + "decoder.layers.0.ffn.linear1.weight"):
        out["model.one_former.dim_feedforward"] = s[0]
    if n := _layers(names, DECODER + "encoder.layers."):
        out["model.sem_seg_head.transformer_enc_layers"] = n
    if s := shapes.get(DECODER + "encoder.layers.0.fc1.weight"):
        out["model.sem_seg_head.dim_feedforward"] = s[0]
    if s := shapes.get(DECODER + "mask_projection.weight"):
        out["model.sem_seg_head.mask_dim"], out["model.sem_seg_head.convs_dim"] = s[0], s[1]
    if s := shapes.get("model.task_encoder.task_mlp.layers.0.0.weight"):
        out["model.text_encoder.task_seq_len"] = s[1]
    if s := shapes.get(TEXT + "text_encoder.positional_embedding"):
        out["model.text_encoder.context_length"], out["model.text_encoder.width"] = s
    if s := shapes.get(TEXT + "text_encoder.token_embedding.weight"):
        out["model.text_encoder.vocab_size"] = s[0]
    if n := _layers(names, TEXT + "text_encoder.transformer.layers."):
        out["model.text_encoder.num_layers"] = n
    if n := _layers(names, TEXT + "text_projector.layers."):
        out["model.text_encoder.proj_num_layers"] = n
    if s := shapes.get(TEXT + "prompt_ctx.weight"):
        out["model.text_encoder.n_ctx"] = s[0]
    return out


def spec_differences(shapes: dict[str, tuple[int, ...]], spec: ExperimentSpec) -> list[str]:
    """`key=value (the spec has ...)` for each model key whose value the weights show to be another."""
    out = []
    for key, value in infer_model(shapes).items():
        have = spec.value_at(key)
        same = math.isclose(value, have) if isinstance(value, float) else list(value) == list(have) if isinstance(
            value, list) else value == have
        if not same:
            out.append(f"{key}={json.dumps(value)} (the spec has {json.dumps(have)})")
    return out
