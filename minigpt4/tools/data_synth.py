"""``facegpt-data synth``: a synthetic face data set in the team's real layout and both formats.

Written under ``--out``::

    GPT4VisionData/Images/synth/img_NNNNN.jpg
    GPT4VisionData/Annotations/gpt4VisionCalls_Cleaned_BySection.json     section dict
    ShareGPTData/Images/{sam/images,coco/train2017}/...jpg
    ShareGPTData/Annotations/subset_objects_gpt4vision_100k.json           JSON list
    ShareGPTData/Annotations/subset_objects_share-captioner_coco_lcs_sam_1246k_1107.json
    metadata.json                                                          ground truth per image, counts, chance
    label_maps/<section>.yaml                 one label map per closed-set section (``facegpt-eval --label-maps``)

Answers depend only on what is drawn (:mod:`minigpt4.tools.synth_faces`), so a model that uses the image can
learn them and one that ignores it stays at chance. The same ``--seed`` writes the same bytes.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from typing import Any, Dict, List, Tuple

import yaml

from minigpt4.tools.synth_faces import ANSWERS, FACE_ATTRIBUTES, LABEL_WORDS, draw_face, random_attributes

SECTION_FILE = "GPT4VisionData/Annotations/gpt4VisionCalls_Cleaned_BySection.json"
SHAREGPT_FILES = ("ShareGPTData/Annotations/subset_objects_gpt4vision_100k.json",
                  "ShareGPTData/Annotations/subset_objects_share-captioner_coco_lcs_sam_1246k_1107.json")
#: section → the attribute its answers name (None: description sections)
SECTION_ATTRIBUTE: Dict[str, Any] = {
    "Facial Expression due to contextual cues": "expression",
    "Facial Characteristics Long": None,
    "Facial Characteristics Short ": None,
    "Human or not": "is_face",
    "Fitzpatrick": "fitzpatrick",
    "Feature by Feature Description": None,
    "Hair Color": "hair",
    "Accessories": "accessory",
    "Posture": "tilt",
    "Clothing Pattern": "pattern",
}
QUESTIONS = {
    "Facial Expression due to contextual cues": ["What facial expression does the person show?",
                                                 "How does this person feel, judging by the face?"],
    "Human or not": ["Is this a human face?", "Does this image show a human face?"],
    "Fitzpatrick": ["What is the Fitzpatrick skin type of the person?",
                    "Classify the skin tone on the Fitzpatrick scale."],
    "Facial Characteristics Short ": ["Describe the face briefly."],
    "Facial Characteristics Long": ["Describe the facial characteristics of this person in detail."],
    "Hair Color": ["What colour is the person's hair?", "Which hair colour does the person have?"],
    "Accessories": ["Does the person wear glasses or earrings?", "Which accessories does the person wear?"],
    "Posture": ["How is the head held?", "Is the head tilted?"],
    "Clothing Pattern": ["What pattern does the shirt have?", "Describe the pattern of the clothing."],
}
LABEL_MAP_DIR = "label_maps"
PRE_PROMPTS = [
    "You are an expert in facial analysis. Answer the question about the face in the image.",
    "Describe only what is visible in the image.",
    "Answer with one short sentence.",
    "If there is no human face in the image, say so.",
]
MOUTHS = {"happy": "smiling mouth", "sad": "down-turned mouth", "surprised": "open round mouth",
          "neutral": "straight closed mouth"}


def _short(a: Dict[str, str]) -> str:
    return f"A {a['expression']} face with Fitzpatrick type {a['fitzpatrick']} skin and {a['hair']} hair."


def _long(a: Dict[str, str]) -> str:
    return (f"The image shows a human face with Fitzpatrick type {a['fitzpatrick']} skin and {a['hair']} hair. "
            f"The person looks {a['expression']}, with a {MOUTHS[a['expression']]}. "
            f"{ANSWERS['accessory'][a['accessory']]} {ANSWERS['tilt'][a['tilt']]} "
            f"{ANSWERS['pattern'][a['pattern']]}")


def _caption(a: Dict[str, str]) -> str:
    if a["is_face"] == "no":
        return "A simple drawing with shapes and no human face."
    return (f"A drawing of a person with Fitzpatrick type {a['fitzpatrick']} skin and {a['hair']} hair who looks "
            f"{a['expression']}.")


def _turns(pairs: List[Tuple[str, str]], rng: random.Random) -> List[Dict[str, str]]:
    """LLaVA turns; ``<image>`` goes before or after the first question at random."""
    turns = []
    for k, (q, a) in enumerate(pairs):
        if k == 0:
            q = f"<image>\n{q}" if rng.random() < 0.5 else f"{q}\n<image>"
        turns += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return turns


def _section_records(i: int, rel: str, a: Dict[str, str], rng: random.Random) -> Dict[str, List[Dict[str, Any]]]:
    out: Dict[str, List[Dict[str, Any]]] = {}

    def add(section: str, pairs: List[Tuple[str, str]]) -> None:
        out.setdefault(section, []).append({"id": f"img_{i:05d}", "image": rel, "conversations": _turns(pairs, rng)})

    add("Human or not", [(rng.choice(QUESTIONS["Human or not"]), ANSWERS["is_face"][a["is_face"]])])
    if a["is_face"] == "no":
        return out
    add("Facial Expression due to contextual cues",
        [(rng.choice(QUESTIONS["Facial Expression due to contextual cues"]), ANSWERS["expression"][a["expression"]])])
    add("Fitzpatrick", [(rng.choice(QUESTIONS["Fitzpatrick"]), ANSWERS["fitzpatrick"][a["fitzpatrick"]])])
    for section in ("Hair Color", "Accessories", "Posture", "Clothing Pattern"):
        attr = SECTION_ATTRIBUTE[section]
        add(section, [(rng.choice(QUESTIONS[section]), ANSWERS[attr][a[attr]])])
    add("Facial Characteristics Short ", [(QUESTIONS["Facial Characteristics Short "][0], _short(a))])
    add("Facial Characteristics Long", [(QUESTIONS["Facial Characteristics Long"][0], _long(a))])
    add("Feature by Feature Description", [
        ("Describe the mouth.", f"The mouth is a {MOUTHS[a['expression']]}, so the person looks {a['expression']}."),
        ("Describe the skin tone.", f"The skin is Fitzpatrick type {a['fitzpatrick']}."),
    ])
    return out


def _sharegpt_record(i: int, rel: str, a: Dict[str, str], rng: random.Random, int_id: bool) -> Dict[str, Any]:
    pairs = [(rng.choice(["Describe this image.", "What is shown in this picture?"]), _caption(a))]
    if i % 4 == 0:  # every fourth record is a conversation
        pairs.append(("Is this a human face?", ANSWERS["is_face"][a["is_face"]]))
    return {"id": i if int_id else f"{i:06d}", "image": rel, "conversations": _turns(pairs, rng)}


def _save(img: Any, root: str, rel: str) -> None:
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img.save(path, format="JPEG", quality=92)


def _write_json(root: str, rel: str, data: Any) -> None:
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fp:
        json.dump(data, fp, indent=1, ensure_ascii=False)


def synthesize(out: str, n: int = 600, seed: int = 0, size: int = 224, face_fraction: float = 0.8) -> Dict[str, Any]:
    """Write the data set (see the module docstring); returns the metadata also saved as ``metadata.json``."""
    if n < 1 or size < 32:
        raise ValueError(f"synth needs n >= 1 and size >= 32 (got n={n}, size={size})")
    rng = random.Random(seed)
    sections: Dict[str, List[Any]] = {"Pre-Prompt": [{"id": f"pre-prompt-{k}", "prompt": p}
                                                     for k, p in enumerate(PRE_PROMPTS)]}
    sections.update({name: [] for name in SECTION_ATTRIBUTE})
    sections["Multi-Person Interaction"] = []
    lists: Tuple[List[Any], List[Any]] = ([], [])
    images = []
    lo, hi = int(0.4 * n), int(0.6 * n)  # images in [lo, hi) are in both ShareGPT lists
    for i in range(n):
        attrs = random_attributes(rng, face_fraction)
        img = draw_face(attrs, size, random.Random(rng.getrandbits(32)))
        rel = f"synth/img_{i:05d}.jpg"
        _save(img, out, f"GPT4VisionData/Images/{rel}")
        for section, recs in _section_records(i, rel, attrs, rng).items():
            sections[section].extend(recs)
        share_rel = f"sam/images/sa_{i:06d}.jpg" if i < hi else f"coco/train2017/{i:012d}.jpg"
        _save(img, out, f"ShareGPTData/Images/{share_rel}")
        if i < hi:
            lists[0].append(_sharegpt_record(i, share_rel, attrs, rng, int_id=False))
        if i >= lo:
            lists[1].append(_sharegpt_record(i, share_rel, attrs, rng, int_id=True))
        images.append({"index": i, "attributes": attrs,
                       "paths": {"GPT4VisionData": rel, "ShareGPTData": share_rel}})
    _write_json(out, SECTION_FILE, sections)
    for rel, data in zip(SHAREGPT_FILES, lists):
        _write_json(out, rel, data)
    meta = _metadata(n, seed, size, sections, lists, images)
    _write_json(out, "metadata.json", meta)
    write_label_maps(os.path.join(out, LABEL_MAP_DIR))
    return meta


def label_map_documents() -> Dict[str, Dict[str, Any]]:
    """One label map (``facegpt-eval --label-maps`` YAML layout) per closed-set section, keyed by file stem."""
    docs = {}
    for section, attr in SECTION_ATTRIBUTE.items():
        if attr is None:
            continue
        stem = "synth_" + section.strip().lower().replace(" ", "_")
        docs[stem] = {"section": section.strip(), "labels": {label: list(words)
                                                             for label, words in LABEL_WORDS[attr].items()}}
    return docs


def write_label_maps(folder: str) -> List[str]:
    """Write :func:`label_map_documents` as ``folder/<stem>.yaml``; returns the paths."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for stem, doc in label_map_documents().items():
        path = os.path.join(folder, f"{stem}.yaml")
        with open(path, "w", encoding="utf-8") as fp:
            yaml.safe_dump(doc, fp, sort_keys=False, allow_unicode=True)
        paths.append(path)
    return paths


def _metadata(n: int, seed: int, size: int, sections: Dict[str, List[Any]], lists: Tuple[List[Any], List[Any]],
              images: List[Dict[str, Any]]) -> Dict[str, Any]:
    files: Dict[str, Any] = {
        os.path.basename(SECTION_FILE): {
            "records": sum(len(v) for v in sections.values()),
            "unique_images": len({r["image"] for v in sections.values() for r in v if "image" in r}),
            "sections": {k.strip(): len(v) for k, v in sections.items()},
        }
    }
    for rel, data in zip(SHAREGPT_FILES, lists):
        files[os.path.basename(rel)] = {"records": len(data), "unique_images": len({r["image"] for r in data}),
                                        "multi_turn": sum(len(r["conversations"]) > 2 for r in data)}
    shared = {r["image"] for r in lists[0]} & {r["image"] for r in lists[1]}
    chance, majority, counts = {}, {}, {}
    for attr, values in FACE_ATTRIBUTES.items():
        drawn = Counter(im["attributes"][attr] for im in images if im["attributes"][attr])
        chance[attr] = 1.0 / len(values)
        majority[attr] = max(drawn.values()) / sum(drawn.values()) if drawn else 0.0
        counts[attr] = {v: drawn.get(v, 0) for v in values}
    return {"generator": "minigpt4.tools.data_synth", "seed": seed, "n": n, "size": size, "files": files,
            "sharegpt_shared_images": len(shared), "section_attribute": SECTION_ATTRIBUTE, "answers": ANSWERS,
            "attributes": {k: list(v) for k, v in FACE_ATTRIBUTES.items()}, "counts": counts,
            "chance": chance, "majority": majority, "label_maps": LABEL_MAP_DIR, "images": images}
