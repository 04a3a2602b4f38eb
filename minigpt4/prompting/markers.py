"""The image markers and special ids of FaceGPT's prompts: one name per marker, defined here only.

* :data:`IMAGE_HERE` — ``<ImageHere>``: the spot in a prompt where the image embeddings go. Prompts are split on it
  and the text on each side is tokenized on its own (upstream's segment-by-segment tokenization).
* :data:`IMAGE_PROMPT` — ``<Img><ImageHere></Img>``: what a user turn with an image starts with (datasets and chat
  write it; the ``<Img>``/``</Img>`` text around the slot is ordinary text the model reads).
* :data:`LLAVA_IMAGE_TOKEN` — ``<image>``: the image marker of LLaVA / ShareGPT4V records, removed by the dataset
  readers (it never reaches a prompt).

In token ids, :data:`IMAGE_SLOT_ID` marks one image-embedding position and :data:`IGNORE_INDEX` a label that is not
trained on.
"""

from __future__ import annotations

IMAGE_HERE = "<ImageHere>"
IMAGE_PROMPT = f"<Img>{IMAGE_HERE}</Img>"
LLAVA_IMAGE_TOKEN = "<image>"

#: in ``input_ids`` made by the sample encoder: a position that receives one image embedding
IMAGE_SLOT_ID = -1
#: in ``labels``: a position without a training target
IGNORE_INDEX = -100
