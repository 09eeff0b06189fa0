"""A tiny VAE that keeps colour: latents carry each 8x8 patch's mean RGB, the decoder paints it back.

Why: a randomly initialised AutoencoderKL decodes every latent to the same greyish image, so on
the tiny models nothing a LoRA learns can show in its pictures and no fidelity test can pass
for a real reason. Training a VAE at build time would be slow; instead the random VAE (still the
real diffusers class, saved and loaded like any other) gets a hand-set colour path:

- every residual branch (resnets' ``conv2``, attention's ``to_out``) is zeroed, so each block is
  the identity (or its 1x1 shortcut, set to copy channels);
- the first three channels carry R, G, B (in [-1, 1]); downsamplers average 2x2, upsamplers copy;
- the two GroupNorms on the main path (``conv_norm_out`` of encoder and decoder, one group) see
  the colours next to channels held at +K and -K, so the group's spread hardly depends on the
  colour; the norm's scale and shift undo the normalisation, a large shift keeps the SiLU that
  follows nearly linear, and ``conv_out`` undoes the known mix with the group mean;
- the latent of a colour ``c`` is ``c / scaling_factor``, so the scaled latents the denoiser
  sees are in [-1, 1] like a real VAE's.

The other latent channels are zero on encode and ignored on decode. Deterministic: only fixed
numbers are written over the seeded random init.
"""

from __future__ import annotations

from typing import Any

RGB = 3
CONST = 20.0  # the +-K channels: large, so the group statistics are set by them
SHIFT = 12.0  # after the norm: SiLU(x + SHIFT) ~ x + SHIFT for x in [-1, 1]
LOGVAR = -30.0  # the posterior's log-variance: sampling a latent is (almost) its mean


def _const(channel: int) -> float:
    """The value a non-colour channel holds: channel 3 is 0, then +K, -K, ... (balanced in
    every group of 8 and of 32 channels, so the group mean stays the colours' own)."""
    return 0.0 if channel < 4 else (CONST if channel % 2 == 0 else -CONST)


def _centre(conv: Any, pairs: dict[int, float], bias: dict[int, float] | None = None) -> None:
    """Set a conv to read only its centre tap: output ``o`` = ``w * input[i]`` for ``(o, i) -> w``."""
    import torch

    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        k = conv.weight.shape[-1] // 2
        for o, w in pairs.items():
            conv.weight[o, o, k, k] = w
        for o, b in (bias or {}).items():
            conv.bias[o] = b


def _copy(conv: Any) -> None:
    """A conv (1x1 shortcut or 3x3 upsampler) that copies input channel ``i`` to output ``i``;
    output channels beyond the input get their constants from the bias."""
    out_ch, in_ch = conv.weight.shape[:2]
    _centre(conv, {o: 1.0 for o in range(min(out_ch, in_ch))},
            {o: _const(o) for o in range(in_ch, out_ch)})


def _average_down(conv: Any) -> None:
    """The stride-2 downsampler as a 2x2 average (its taps (0,0)..(1,1) never read the padding)."""
    import torch

    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        for c in range(conv.weight.shape[0]):
            conv.weight[c, c, :2, :2] = 0.25


def _identity_blocks(part: Any) -> None:
    """Zero every residual branch of an encoder or decoder; shortcuts and samplers copy."""
    import torch

    with torch.no_grad():
        for name, module in part.named_modules():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "conv2" or name.endswith("to_out.0"):
                module.weight.zero_()
                module.bias.zero_()
            elif leaf == "conv_shortcut" or name.endswith("upsamplers.0.conv"):
                _copy(module)
            elif name.endswith("downsamplers.0.conv"):
                _average_down(module)


def _norm_then_unmix(norm: Any, conv_out: Any, out_pairs: dict[int, int], gain: float,
                     extra: dict[int, float]) -> None:
    """``norm`` (one group over ``n`` channels: 3 colours, channel 3 at zero, the rest +-K) then
    SiLU then ``conv_out``: the norm's scale restores the spread, its shift moves into SiLU's
    linear range, and ``conv_out`` maps colour ``i`` to output ``out_pairs[i]`` times ``gain``
    minus the zero channel, which holds exactly the group mean the norm subtracted (and the
    shift); ``extra`` sets other outputs' biases."""
    import torch

    n = norm.weight.shape[0]
    consts = [_const(c) for c in range(RGB, n)]
    sigma = float(torch.tensor(consts).pow(2).sum().div(n).add(norm.eps).sqrt())
    with torch.no_grad():
        norm.weight.fill_(sigma)
        norm.bias.fill_(SHIFT)
        conv_out.weight.zero_()
        conv_out.bias.zero_()
        k = conv_out.weight.shape[-1] // 2
        for i, o in out_pairs.items():
            conv_out.weight[o, i, k, k] = gain
            conv_out.weight[o, RGB, k, k] = -gain
        for o, b in extra.items():
            conv_out.bias[o] = b


def make_colour_preserving(vae: Any) -> Any:
    """Write the colour path into a freshly initialised ``AutoencoderKL`` (see the module doc)."""
    import torch

    cfg = vae.config
    if cfg.norm_num_groups != 1:
        raise ValueError("the colour-preserving tiny VAE needs norm_num_groups=1 (one group per norm)")
    gain = 1.0 / cfg.scaling_factor
    latent = cfg.latent_channels
    enc, dec = vae.encoder, vae.decoder
    _identity_blocks(enc)
    _identity_blocks(dec)
    width = enc.conv_in.weight.shape[0]
    _centre(enc.conv_in, {c: 1.0 for c in range(RGB)}, {c: _const(c) for c in range(RGB, width)})
    _norm_then_unmix(enc.conv_norm_out, enc.conv_out, {c: c for c in range(RGB)}, gain,
                     {latent + c: LOGVAR for c in range(latent)})
    width = dec.conv_in.weight.shape[0]
    _centre(dec.conv_in, {c: 1.0 / gain for c in range(RGB)}, {c: _const(c) for c in range(RGB, width)})
    _norm_then_unmix(dec.conv_norm_out, dec.conv_out, {c: c for c in range(RGB)}, 1.0, {})
    with torch.no_grad():
        for conv in (getattr(vae, "quant_conv", None), getattr(vae, "post_quant_conv", None)):
            if conv is not None:
                conv.weight.zero_()
                conv.bias.zero_()
                for c in range(conv.weight.shape[0]):
                    conv.weight[c, c, 0, 0] = 1.0
    return vae
