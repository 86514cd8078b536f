"""An hour of video at LWM's scale: VQGAN encoding speed, the token count, and where it fits.

One hour at 1 frame/s is 3,600 frames; an LWM vision model reads each as 256 VQGAN codes and an
end-of-frame marker (257 tokens). This measures, with random weights at LWM's released VQGAN
shape (``VQGANConfig()``: 256 px, 5 levels, 8192 x 64 codebook), the encoder's frames/s on this
machine's default device (median of ``--repeats`` batches of ``--batch`` frames after a warm-up),
the tokens of that hour through ringkit's own prompt format (``vision_tokens``), and
``rk.plan`` for LWM-7B-vision on it: bytes per device and which meshes of 8-256 H100s or TPU v5p
fit. Writes ``benchmarks/results/hour-video-<stamp>.json``::

    python benchmarks/hour_video.py            # about 2 minutes on this CPU
"""

import argparse
import json
import pathlib
import statistics
import time

HERE = pathlib.Path(__file__).parent


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--fps", type=float, default=1.0)
    ap.add_argument("--minutes", type=float, default=60.0)
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp
    import numpy as np

    import ringkit as rk
    from ringkit.tokenize.prompts import vision_tokens
    from ringkit.tokenize.vqgan import VQGAN, Encoder, VQGANConfig, _conv

    cfg = VQGANConfig()
    size = 16 * cfg.downsample  # 256 px: 16 x 16 codes per frame
    frames = np.random.default_rng(0).integers(0, 256, (args.batch, size, size, 3), np.uint8)
    x = jnp.zeros((1, size, size, 3), jnp.float32)
    key = jax.random.key(0)
    encoder = Encoder(cfg).init(key, x)["params"]
    h = Encoder(cfg).apply({"params": encoder}, x)
    quant = _conv(cfg.quantized_embed_dim, kernel=1).init(key, h)["params"]
    codebook = jax.random.normal(key, (cfg.num_embeddings, cfg.quantized_embed_dim))
    vqgan = VQGAN({"encoder": encoder, "quant_conv": quant, "quantize": {"embeddings": codebook}},
                  cfg, batch=args.batch)
    codes = vqgan.encode(frames)  # warm-up: compile
    seconds = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        codes = vqgan.encode(frames)
        seconds.append(time.perf_counter() - t0)
    fps = args.batch / statistics.median(seconds)

    n_frames = int(args.minutes * 60 * args.fps)
    per_frame = vision_tokens(np.zeros((1, *codes.shape[1:]), np.int32)).size
    tokens = n_frames * per_frame
    plans = {}
    for device in ("h100", "tpu-v5p"):
        p = rk.plan("lwm-7b-vision", tokens, "1,1,8,8", device=device)
        plans[device] = {str(n): [",".join(map(str, q.mesh.values())) for q in
                                  p.feasible_meshes(n)[:3]] for n in (8, 16, 32, 64, 256)}
    p = rk.plan("lwm-7b-vision", tokens, "1,1,8,8")
    result = dict(device=str(jax.devices()[0]), vqgan=vars(cfg), batch=args.batch,
                  encode_frames_per_s=fps, frames=n_frames, tokens_per_frame=per_frame,
                  tokens=tokens, encode_hours_this_device=n_frames / fps / 3600,
                  plan_64_tp8_sp8=dict(weights=p.weights, kv_cache=p.kv_cache,
                                       activations=p.activations, peak=p.peak),
                  feasible_meshes=plans)
    print(json.dumps(result, indent=1))
    out = HERE / "results" / f"hour-video-{time.strftime('%Y-%m-%dT%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
