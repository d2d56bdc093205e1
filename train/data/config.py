"""The loader's configuration (`data.*` keys of a training config)."""

from __future__ import annotations

from pydantic import Field, field_validator

from corpus.config import Section

RGB = tuple[float, float, float]


class DataConfig(Section):
    """The loader. Patch size and merge come from the model config (model.vision), not from here."""

    corpus: str = ""  # local path or fsspec URL; `interloom train --corpus` sets it
    tokenizer: str = "train"  # path to a tokenizer.json, or "train": train one on the corpus into RUN_DIR
    vocab_size: int = Field(2048, ge=1)  # when tokenizer == "train"
    seq_len: int = Field(512, ge=2)  # T: tokens per packed row
    batch_size: int = Field(4, ge=1)  # B: rows per micro-batch per rank
    min_pixels: int = Field(64 * 64, ge=1)  # pixel budget of one resized image (h*w in pixels)
    max_pixels: int = Field(256 * 256, ge=1)
    max_decode_pixels: int = Field(40_000_000, ge=1)  # refuse to decode larger images (decompression bombs)
    max_aspect_ratio: float = Field(20.0, ge=1)  # longer side / shorter side; beyond it the image is dropped
    text_after_image: int = Field(32, ge=0)  # tokens after <img_end> that are the image's text for the contrastive loss
    # per channel (R, G, B): pixels -> (x/255 - mean_c) / std_c; one number sets all three. `--init-vision`
    # takes the tower's own values (its preprocessor_config.json: CLIP's for Qwen2-VL, 0.5 for SigLIP2)
    image_mean: RGB = (0.5, 0.5, 0.5)
    image_std: RGB = (0.5, 0.5, 0.5)
    follow: bool = False  # keep reading new manifest lines while a build is writing
    poll_s: float = Field(2.0, gt=0)  # follow mode: seconds between manifest polls
    num_workers: int = Field(0, ge=0)  # torch DataLoader worker processes per rank (0 = in the training process)
    # threads of the training process that turn a batch's uint8 pixels into float32, one batch each, ahead
    # of the trainer (~30 ms per single-gpu batch here: one thread keeps up with ~30 batches/s)
    pixel_threads: int = Field(1, ge=1)

    @field_validator("image_mean", "image_std", mode="before")
    @classmethod
    def _per_channel(cls, v: object) -> object:
        """A single number is the same value on every channel."""
        return (v, v, v) if isinstance(v, int | float) else v

    @field_validator("image_std")
    @classmethod
    def _positive(cls, v: RGB) -> RGB:
        if min(v) <= 0:
            raise ValueError(f"data.image_std={list(v)}: every channel's std must be > 0")
        return v
