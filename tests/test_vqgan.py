"""LWM's VQGAN in Flax against LWM's own outputs (../shared/lwm-vectors), and by shape at full size."""

from pathlib import Path

import jax
import numpy as np
import pytest

from ringkit.errors import FormatError
from ringkit.tokenize.vqgan import VQGAN, Decoder, Encoder, VQGANConfig

LWM = Path(__file__).resolve().parents[2] / "shared" / "lwm-vectors"
needs_lwm = pytest.mark.skipif(not (LWM / "vqgan").exists(),
                               reason=f"LWM conformance vectors not found at {LWM}")


@needs_lwm
def test_matches_lwm_encoder_and_decoder():
    want = np.load(LWM / "inputs_and_expected.npz")
    vq = VQGAN.load(LWM / "vqgan", batch=1)  # batch 1: two jitted calls, outputs concatenated
    assert vq.config == VQGANConfig(hidden_channels=32, channel_mult=(1, 1, 1, 1),
                                    num_res_blocks=1, z_channels=32, quantized_embed_dim=8)
    codes, z, quantized = vq.encode(want["vq_frames_uint8"], return_latents=True)
    np.testing.assert_allclose(z, want["vq_prequant_latents"], atol=1e-5, rtol=0)
    # Every code equal, except where LWM's own nearest code is a near-tie (README: one position,
    # margin 5e-7; which of the two wins depends on the CPU's float rounding).
    differ = codes != want["vq_codes"]
    assert np.all(want["vq_code_margin"][differ] < 1e-5), want["vq_code_margin"][differ]
    assert differ.sum() <= 1 and codes.shape == (2, 16, 16) and codes.dtype == np.int32
    # Quantized latents: LWM's wherever the codes agree, the chosen code's vector where they don't.
    np.testing.assert_allclose(quantized[~differ], want["vq_quantized"][~differ], atol=1e-5, rtol=0)
    codebook = np.asarray(vq.params["quantize"]["embeddings"])
    np.testing.assert_allclose(quantized[differ], codebook[codes[differ]], atol=1e-5, rtol=0)
    recon = vq.decode(want["vq_codes"])
    np.testing.assert_allclose(recon, want["vq_reconstruction"], atol=1e-5, rtol=0)
    assert recon.shape == (2, 128, 128, 3) and recon.dtype == np.float32


def test_release_architecture_by_shape():
    """LWM's released VQGAN: 256 px frames -> 16 x 16 codes, and back."""
    cfg = VQGANConfig()
    x = jax.ShapeDtypeStruct((2, 256, 256, 3), np.float32)
    params = jax.eval_shape(lambda: Encoder(cfg).init(jax.random.key(0), np.zeros((1, 256, 256, 3),
                                                                                  np.float32)))
    z = jax.eval_shape(lambda p, x: Encoder(cfg).apply(p, x), params, x)
    assert z.shape == (2, 16, 16, cfg.z_channels)
    dparams = jax.eval_shape(lambda: Decoder(cfg).init(jax.random.key(0),
                                                       np.zeros((1, 16, 16, 64), np.float32)))
    y = jax.eval_shape(lambda p, z: Decoder(cfg).apply(p, z), dparams,
                       jax.ShapeDtypeStruct((2, 16, 16, 64), np.float32))
    assert y.shape == (2, 256, 256, 3)


def test_bad_parameters():
    with pytest.raises(FormatError, match="not LWM VQGAN parameters"):
        VQGANConfig.from_params({"encoder": {}})
