"""`interloom generate CKPT --prompt TEXT [--image PATH ...]`: continue a prompt with a trained VLM.

CKPT is a run directory (its latest checkpoint), a checkpoint_* directory, or a folder written by
`interloom export model`. Each `<image>` in the prompt is replaced, in order, by one --image (resized to the
run's pixel budget, laid out as in training: <img_start> image tokens <img_end>). Decoding uses the decoder's
KV cache; --temperature 0 (the default) is greedy, otherwise sampling with --top-p and --seed. Prints the
continuation, or with --json one JSON object {"text", "token_ids"}.
"""

from __future__ import annotations

import argparse

EXAMPLES = """\
examples:
  interloom generate runs/debug --image cat.jpg --prompt "<image> A photo of"
  interloom generate exported/ --image a.jpg --image b.jpg --prompt "<image> vs <image>:" --temperature 0.8 --top-p 0.9
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate",
        help="continue a prompt with images using a trained model (KV cache)",
        description=__doc__,
        epilog=EXAMPLES,
    )
    p.add_argument("checkpoint", metavar="CKPT", help="run directory, checkpoint directory or exported model folder")
    p.add_argument("--prompt", required=True, help="prompt text; each <image> marks where the next --image goes")
    p.add_argument(
        "--image",
        dest="images",
        action="append",
        default=[],
        metavar="PATH",
        help="image file for the next <image> in the prompt (repeatable)",
    )
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (with --temperature > 0)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--json", action="store_true", help='print {"text", "token_ids"} as one JSON line')
    p.add_argument("--device", default="cpu", help="torch device to run on, e.g. cuda (default cpu)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from train.generate import encode_prompt, generate, load_inference_model, read_image_file, torch_device
    from train.tokenizer import Tokenizer

    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens={args.max_new_tokens}: must be >= 1")
    if not args.temperature >= 0:  # also NaN
        raise ValueError(f"--temperature={args.temperature}: must be >= 0 (0 = greedy)")
    if not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p={args.top_p}: must be in (0, 1]")
    device = torch_device(args.device)
    images = [read_image_file(p) for p in args.images]
    model, tok_path, data = load_inference_model(args.checkpoint)
    model = model.to(device)
    tok = Tokenizer.load(tok_path)
    prompt = encode_prompt(args.prompt, images, tok, data, model.cfg.vision.patch_size, model.cfg.vision.merge)
    new = generate(model, prompt, args.max_new_tokens, args.temperature, args.top_p, args.seed, tok.eos_id)
    text = tok.decode([i for i in new if i not in tok.special_ids])
    print(json.dumps({"text": text, "token_ids": new}) if args.json else text)
    return 0
