"""`interloom eval CKPT --corpus C`: held-out losses and image-text retrieval of a trained model.

CKPT is a run directory (its latest checkpoint), a checkpoint_* directory, or a folder written by
`interloom export model`. Reads the first --batches batches of C with the run's loader settings (an
exported folder: its interloom_data.json) in one process and prints one JSON object:
  val_lm_loss, val_image_text_loss, val_text_loss   token-mean next-token losses: all label tokens, those
                                                    after an image in their document, the others
  val_image_text_loss_noise_images                  the image-text loss again with every image replaced by
                                                    noise: above val_image_text_loss when the model uses
                                                    the images
  recall@{1,5}_image_to_text, recall@{1,5}_text_to_image, retrieval_pairs   retrieval among all the
                                                    evaluated image-caption pairs, from the contrastive
                                                    embeddings (when the model has them)
(train/evaluate.py).
"""

from __future__ import annotations

import argparse

EXAMPLES = """\
examples:
  interloom eval runs/debug --corpus val_corpus/
  interloom eval exported/ --corpus val_corpus/ --batches 64
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="held-out loss (image-conditioned vs text) and retrieval recall@1/5",
        description=__doc__,
        epilog=EXAMPLES,
    )
    p.add_argument("checkpoint", metavar="CKPT", help="run directory, checkpoint directory or exported model folder")
    p.add_argument("--corpus", required=True, metavar="PATH", help="held-out corpus directory or fsspec URL")
    p.add_argument("--batches", type=int, default=16, help="batches to evaluate (default 16)")
    p.add_argument("--seed", type=int, default=0, help="shard order and noise-image seed")
    p.add_argument("--device", default="cpu", help="torch device to run on, e.g. cuda (default cpu)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from corpus.format import Corpus
    from train.data import Loader
    from train.evaluate import evaluate, retrieval_recall
    from train.generate import load_inference_model, torch_device

    if args.batches < 1:
        raise ValueError(f"--batches={args.batches}: must be >= 1")
    device = torch_device(args.device)
    Corpus(args.corpus)  # ValueError "not a corpus: ..." before the model loads
    model, tok_path, data = load_inference_model(args.checkpoint)
    data = data.model_copy(update={"corpus": args.corpus, "follow": False, "num_workers": 0})
    image_id = model.cfg.image_token_id
    model = model.to(device)

    def batches():
        return iter(Loader(data, str(tok_path), model.cfg.vision.patch_size, seed=args.seed))

    row, image_IC, text_IC = evaluate(model, batches(), args.batches, image_id, device)
    noisy, _, _ = evaluate(model, batches(), args.batches, image_id, device, noise_seed=args.seed)
    row["val_image_text_loss_noise_images"] = noisy["val_image_text_loss"]
    row |= retrieval_recall(image_IC, text_IC)
    print(json.dumps(row))
    return 0
