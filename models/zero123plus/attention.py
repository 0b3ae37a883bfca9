"""Reference attention: the mechanism that conditions Zero123++ on the input view.

Each denoising step runs the UNet twice. The *reference* pass sees the noised
condition latent and every self-attention layer (``attn1``) records its input
(the block's ``norm1`` output). In the *main* pass each ``attn1`` attends over
its own tokens followed by the recorded reference tokens of the same layer, so
the generated views can copy appearance from the input view. Cross-attention
(``attn2``) is untouched. The processor below does this with PyTorch SDPA.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention

ReferenceMode = Literal["record", "attend"]


@dataclass
class ReferenceBank:
    """The reference pass's self-attention inputs, keyed by layer, for one denoising step.

    Passed to the UNet through ``cross_attention_kwargs`` rather than stored on the
    processors, so one loaded UNet can serve concurrent calls without shared state.
    """

    mode: ReferenceMode
    states: dict[str, torch.Tensor] = field(default_factory=dict)

    def attending(self) -> "ReferenceBank":
        return ReferenceBank(mode="attend", states=self.states)


class ReferenceAttnProcessor:
    """SDPA attention for a UNet ``Attention`` layer; self-attention layers join the reference bank."""

    def __init__(self, layer_name: str, *, is_self_attention: bool) -> None:
        self.layer_name = layer_name
        self.is_self_attention = is_self_attention

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        reference: ReferenceBank | None = None,
    ) -> torch.Tensor:
        if attn.spatial_norm is not None or attn.group_norm is not None or hidden_states.ndim != 3:
            raise NotImplementedError("ReferenceAttnProcessor supports transformer-block attention only")
        if attention_mask is not None:
            raise NotImplementedError("Zero123++ uses no attention mask")

        if encoder_hidden_states is None:
            context = hidden_states
        elif attn.norm_cross:
            context = attn.norm_encoder_hidden_states(encoder_hidden_states)
        else:
            context = encoder_hidden_states

        if self.is_self_attention and reference is not None:
            if reference.mode == "record":
                reference.states[self.layer_name] = context
            else:
                # Own tokens first, then the reference tokens: the order the reference uses.
                context = torch.cat([context, reference.states[self.layer_name]], dim=1)

        batch = hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        key = attn.to_k(context)
        value = attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (
            tensor.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for tensor in (query, key, value)
        )
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        out = F.scaled_dot_product_attention(query, key, value, scale=attn.scale)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def install_reference_attention(unet: UNet2DConditionModel) -> None:
    """Give every attention layer of ``unet`` a ReferenceAttnProcessor (attn1 = self, attn2 = cross)."""
    processors = {
        name: ReferenceAttnProcessor(name, is_self_attention=name.endswith("attn1.processor"))
        for name in unet.attn_processors
    }
    unet.set_attn_processor(processors)
