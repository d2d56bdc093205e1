"""The batch contract between the loader (`train/data/`) and the model (`train/model/`).

Shape legend (suffixes on tensor names, torchtitan style):
  B  rows in the batch            T  tokens per row (seq_len, packed)
  N  image patches in the batch   P  values per patch = 3 * patch_size * patch_size
  I  images in the batch          (merged image tokens per image = (h/2) * (w/2), h, w even)

Row layout: several documents packed into one row of length T. A document is
  <bos> text tokens ... <img_start> <image> x M_i <img_end> text tokens ... <eos>
Attention never crosses documents (segment_ids) and the vision encoder never attends across images.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

IGNORE_INDEX = -100
SPECIAL_TOKENS = ("<|pad|>", "<|bos|>", "<|eos|>", "<|img_start|>", "<|image|>", "<|img_end|>")


@dataclass
class Batch:
    input_ids_BT: torch.Tensor  # int64; <|image|> id at image token positions, <|pad|> after the last doc
    labels_BT: torch.Tensor  # int64; next-token targets aligned with inputs (labels[t] = input[t+1]),
    #                          IGNORE_INDEX where the target is an image/special/pad token other than <eos>
    #                          (the last text token of a document predicts <eos>) or crosses a document
    position_ids_BT: torch.Tensor  # int64; restart at 0 at each document start
    segment_ids_BT: torch.Tensor  # int32; 0, 1, 2... per packed document within the row; -1 on padding
    pixel_values_NP: torch.Tensor  # float32; patches of all images, image after image in order of appearance
    #                                (row-major over B then T), each image's patches in raster order
    grid_hw_I2: torch.Tensor  # int64; (h, w) in patches per image, both even; sum(h*w) == N
    text_after_image_BT: torch.Tensor  # int64; index i of the image whose following text this token belongs
    #                                  to (up to a fixed number of tokens after <img_end>), else -1; for the
    #                                  contrastive loss

    def to(self, device: torch.device | str) -> Batch:
        return Batch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    @property
    def n_images(self) -> int:
        return int(self.grid_hw_I2.shape[0])
