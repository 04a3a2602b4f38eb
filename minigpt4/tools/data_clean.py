"""``facegpt-data clean``: drop GPT-4V refusals and exact duplicates, strip hedge clauses and disclaimers.

GPT-4V answers about faces often open with a hedge and then answer ("While I can't know how the person feels,
the person appears to be smiling ..."). The cleaner keeps every answer that answers and strips only the hedge.
Matching is case-insensitive, after curly apostrophes become ``'``. An answer is cut into sentences, each
sentence into **segments** at strong clause boundaries (``, but`` / ``; however,`` / ``, though`` / ``:`` /
dashes ...), and each segment is one of:

* **disclaimer**: it opens with an apology or AI preamble ("I'm sorry", "As an AI"); or an inability or
  impropriety ("can't", "unable to", "not possible to", "not appropriate to", "hard to" ...) governs a
  judgement verb ("determine", "identify", "know", "tell", "make assumptions", "be certain", "help with" ...),
  possibly through adverbs ("can't *fully* assess"); or the judgement is passive ("can't be determined"), a
  gerund subject ("determining X isn't reliable"), or first-person doubt ("I'm not sure"). Inability without a
  judgement verb is description ("cannot be seen", "can't help laughing", "hard to miss") and stays;
* a **hedge intro**: a leading subordinate clause ("While I can't know how they feel, ...", "Although an
  accurate classification requires an in-person assessment, ...") that is a disclaimer, or a concession about
  accuracy or sensitivity that names nobody in the image, followed by a main clause that answers: only the
  intro goes. A trailing concession of the same kind (", though I can't be certain") goes too;
* an **offer** ("However, I can describe the visible features", "If you have other questions, ..."), or a
  lead-in ("I can tell you that") in front of the answer, which then stays;
* **content**: everything else.

In an answer that holds a disclaimer, a sentence that names nobody in the image and speaks of accuracy or
sensitivity in general ("Gender identity is personal.", "Please consult a dermatologist.") is commentary and
goes too, as does a caveat sentence ("Please note that ... is speculative"). Answers without a disclaimer are
kept byte for byte. Otherwise the disclaimer, offer and commentary parts are removed and the rest is rebuilt:
the connective left in front ("However,", "That said,", "But") is dropped, the first letter is capitalised
and the sentence keeps its end mark (**stripped**). When fewer than :data:`MIN_KEPT_WORDS` words of content
remain, the answer is a **refusal** and its question/answer pair is dropped; a record with no pair left is
dropped. **Duplicates**: a record whose image and conversation (lower-cased, whitespace-collapsed) equal an
earlier record's is dropped.

Precision and recall on a hand-labelled set of GPT-4V-style face answers are printed by
``benchmarks/bench_refusal_detector.py``. The input file is never modified: the cleaned copy is written
elsewhere, in the same layout, with a report of kept/dropped per section. Records that are not LLaVA-shaped
and prompt sections pass through unchanged.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from typing import Any, Dict, List, Optional, Tuple

from minigpt4.datasets.json_stream import iter_sections
from minigpt4.tools.data_common import AnnFile, format_table, is_prompt_section, iter_file, progress, sections_of

MIN_KEPT_WORDS = 2

#: adverbs allowed between an inability and its verb ("can't *completely* rule", "not able to *accurately* measure")
_ADVERBS = r"(?:\w+ly|just|always|even|quite|at all|for sure)"
#: verbs of judging or answering that an inability must govern for a clause to be a disclaimer
_JUDGE = (r"(?:determine|identify|assess|tell|know|infer|speculate|assume|guess|judge|say(?! (?:no|yes)\b)|"
          r"ascertain|confirm|"
          r"classify|categori[sz]e|recogni[sz]e|estimate|measure|evaluate|assign|conclude|label|diagnose|gauge|"
          r"discern|deduce|provide|offer|give|share|comment|discuss|answer|comply|fulfill?|assist|verify|check|"
          r"analy[sz]e|interpret|rate|describe|quantify|pinpoint|establish|predict|specify|"
          r"help(?: with| you|(?=\s*(?:[.!,;]|$)))|draw (?:any |such )?conclusions?|"
          r"make (?:any )?(?:assumptions|judg(?:e)?ments|determinations|inferences|guesses|claims|conclusions|"
          r"a (?:determination|judg(?:e)?ment|guess))|"
          r"be (?:\w+ly )?(?:certain|sure|definitive|accurate|precise)|"
          r"read (?:minds|thoughts|emotions|feelings|people)|"
          r"do (?:that|this|it|so)|do(?=\s*(?:[.!,;]|$)))\b")
#: an inability, impropriety or unwillingness of the answerer (or of anyone) to judge
_NEG = (r"(?:can't|cannot|can not|couldn't|could not|unable to|not able to|won't be able to|not in a position to|"
        r"(?:(?:\w*n't|not|never)(?: be)? |im|in)(?:possible|appropriate|feasible|fair|right)"
        r"(?: for (?:me|anyone|us|one))? to|"
        r"(?:difficult|hard|challenging|tricky|tough|not easy)(?: for (?:me|anyone|us))? to|no (?:\w+ )?way to|"
        r"\bi (?:do not|don't|won't|will not|would not|wouldn't)|(?:one|you|we) (?:should not|shouldn't)|"
        r"not (?:allowed|permitted|authori[sz]ed|designed|programmed|going|willing) to|(?:would|'d) rather not|"
        r"prefer not to|refrain from|decline to|not (?:qualified|equipped) to)")
_PARTICIPLE = (r"(?:determined|identified|assessed|known|inferred|judged|measured|ascertained|established|"
               r"deduced|confirmed|classified|estimated|told|assumed|discerned)")
#: what a judgement "would be": not reliable, speculative, unfair ...
_LIMIT_ADJ = (r"(?:(?:is|are|would be|will be)\s+not|isn't|aren't|wouldn't be|cannot be|can't be)\s+(?:\w+ly\s+)?"
              r"(?:reliable|possible|accurate|appropriate|feasible|fair)|"
              r"(?:is|are|would be|will be|can be|could be|is too|would only be|remains?)\s+(?:\w+ly\s+)?"
              r"(?:speculative|impossible|difficult|hard|challenging|tough|unreliable|inaccurate|inappropriate|"
              r"subjective|unfair|presumptuous|misleading|guesswork|limited)")
#: the act of judging as the subject of a clause: "determining X ...", "any conclusion about X ..."
_JUDGING = (r"(?:(?:^|(?<=, ))\w+ing|(?:any|such|an?|the|this|that|my) "
            r"(?:\w+ )?(?:conclusions?|guess(?:es)?|assumptions?|judg(?:e)?ments?|interpretations?|inferences?|"
            r"assessments?|classifications?|determinations?|identifications?|estimates?|speculation))")
#: "from an image" in general (not "from this picture"): the mark of a claim about what images can show
_FROM_IMAGE = (r"(?:\bfrom (?:an? |one |a single )?(?:\w+ )?(?:image|photo|photograph|picture|face|"
               r"snapshot|frame)s?\b|\bfrom (?:someone's |a person's |their |physical )?(?:appearance|looks)\b|"
               r"\b(?:image|photo|picture|face|appearance) alone\b)")
_DISCLAIMER_PATTERNS = tuple(re.compile(p) for p in (
    r"\b" + _NEG + r"(?:\s+" + _ADVERBS + r")*\s+(?:help (?:to )?)?" + _JUDGE,
    r"\b(?:can't|cannot|can not|couldn't|could not|isn't|is not|aren't|are not|won't|will not)\s+(?:be\s+)?"
    r"(?:" + _ADVERBS + r"\s+)*" + _PARTICIPLE + r"\b",
    r"\b" + _JUDGING + r"\b(?:[^.;:!?,]{0,80}?\s)?(?:" + _LIMIT_ADJ + r")\b",
    r"\b(?:it|that|this)(?: would| could| might)? (?:be|is|'s|'d be|seems) (?:\w+ly )?(?:speculative|unfair|"
    r"presumptuous|misleading|guesswork|irresponsible)\b",
    r"\bi(?:'m| am) (?:not (?:sure|certain)|uncertain)\b",
    r"\b(?:not|n't)\s+(?:provide|give|offer|contain|have|include)\s+(?:enough|sufficient)\s+"
    r"(?:information|detail|details|context|evidence)\b",
    r"\b(?:don't|do not) have the (?:ability|capability|capacity|means)\b",
    r"(?:\bnot|n't) something (?:that )?(?:(?:i|we)\b|(?:one|you|anyone)?\s*(?:'m |am |are |is )?"
    r"(?:can|could|able|allowed)\b)",
    r"(?:\bcan't|\bcannot|\bcan not|\bunable to|\bimpossible|(?:\bnot|n't) possible|\bno (?:\w+ )?way)\b[^.;:!?]{0,80}?"
    + _FROM_IMAGE,
    r"\bi(?:'ll| will)(?: have to| must)? (?:refrain|pass|decline)\b",
))
_APOLOGY = re.compile(r"^(?:i'm sorry|i am sorry|sorry\b|i apologi[sz]e|my apologies|unfortunately,? i\b|"
                      r"as an ai\b|as a language model|as an artificial)")
#: words of accuracy or sensitivity that make a clause naming nobody in the image a caveat
_CAVEAT = re.compile(r"\b(?:accurate|accurately|accuracy|reliable|reliably|certain|certainty|definitive|"
                     r"definitively|precise|precisely|exact|exactly|estimate|approximation|speculative|speculation|"
                     r"subjective|stereotyp\w*|assumptions?|in-person|in person|dermatologists?|professionals?|"
                     r"qualified|medical|clinical|complex|personal|identity|self-identif\w*|social construct|"
                     r"sensitive|privacy|private|appearance)\b")
#: words and stems of which every disclaimer rule needs one (a superset, checked cheaply: a sentence with none is
#: content); the caveat words are in it because concessions and caveat openers need one
_HINT_WORDS = frozenset((
    "not no never cannot unable sorry unfortunately difficult hard challenging tricky tough rather prefer refrain "
    "decline pass uncertain subjective unfair presumptuous misleading guesswork limited irresponsible accurate "
    "accurately accuracy reliable reliably certain certainty definitive definitively precise precisely exact exactly "
    "estimate approximation assumption assumptions dermatologist dermatologists professional professionals "
    "qualified medical clinical complex personal identity sensitive privacy private appearance").split())
_HINT_STEMS = ("n't", "impossib", "inappropriat", "infeasib", "apolog", "as an ai", "as a language model",
               "as an artificial", "speculat", "unreliab", "inaccura", "stereotyp", "self-identif", "in-person",
               "in person", "social construct")
_WORD = re.compile(r"[a-z]+")
_CAVEAT_OPENER = re.compile(r"^(?:please note|note that|keep in mind|please keep in mind|bear in mind|please bear "
                            r"in mind|it's (?:important|worth) (?:to )?(?:note|noting|remember)|it is (?:important|"
                            r"worth) (?:to )?(?:note|noting|remember)|remember that|please remember|please be aware)")
_REFERENT = re.compile(r"\b(?:he|she|they|him|her|them|his|hers|their|theirs|himself|herself|themselves|"
                       r"person|persons|people|individuals?|man|men|woman|women|boys?|girls?|child|children|kids?|"
                       r"toddler|baby|adults?|teen|teenager|image|photo|photograph|picture|portrait|faces?|subject)\b")
_OFFER = re.compile(r"^(?:i can(?: however,?)? (?:describe|tell|provide|offer|give|share|help|assist|say|comment|"
                    r"talk)\b|i(?:'d| would) (?:be )?(?:happy|glad) to|i(?:'m| am) (?:happy|glad) to|let me\b|"
                    r"here(?: is|'s| are)\b|if you\b|feel free|(?:please )?let me know|what i can\b|thank you|"
                    r"thanks\b)")
_LEAD_IN = re.compile(r"^(?:what )?i can (?:tell you|say|confirm|see|note|observe|describe)(?: is)? that\s+")
_CONNECTIVE = re.compile(r"^(?:(?:however|nevertheless|nonetheless|still|instead|regardless|anyway|that said|"
                         r"that being said|having said that|with that said|even so|in any case|though|although)\s*,\s*|"
                         r"(?:but|yet|though|and|so)\b,?\s*)")
_BOUNDARY = re.compile(r"\s*;\s*(?:(?:however|but|still|nevertheless|nonetheless|that said|yet)\b,?\s*)?|"
                       r",\s*(?:but|however|though|although|even though|yet|while|whereas|that said|nevertheless|"
                       r"nonetheless)\b,?\s*|\s+but\s+|:\s+|\s+(?:\u2014|\u2013|--?)\s+")
_CONCESSIVE_LEAD = re.compile(r"^[,;]?\s*(?:but|though|although|even though|while|whereas)\b")
_SUBORDINATE = re.compile(r"^(?:while|although|though|even though|even if|whereas|since|because|as|given that|"
                          r"despite|without)\b")
_CONCESSIVE = re.compile(r"^(?:while|although|though|even though|even if|whereas)\b")
#: between sentences: after an end mark (and a closing quote) before a capital, or a line break
_SENTENCE = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')]))\s+(?=[\"'(]?[A-Z0-9])|\s*\n\s*")
_END = re.compile(r"[.!?]+[\"')]*$")
#: text in quotes (someone else's words: a sign that reads 'I cannot tell a lie'); apostrophes inside words stay
_QUOTED = re.compile(r"(?<!\w)'(?:[^']|'(?=\w))*'(?!\w)|\"[^\"]*\"|\u201c[^\u201d]*\u201d")


def _norm(text: str) -> str:
    """Lower-case, straight apostrophes, quoted text blanked ("her shirt reads 'I cannot tell a lie'" quotes
    nobody's refusal); the same length as ``text``, so offsets carry over."""
    s = text.replace("\u2019", "'").replace("\u2018", "'").replace("\u02bc", "'")
    lowered = s.lower()
    s = lowered if len(lowered) == len(s) else "".join(c.lower() if len(c.lower()) == 1 else c for c in s)
    return _QUOTED.sub(lambda m: m.group(0)[0] + "q" * (len(m.group(0)) - 2) + m.group(0)[-1], s)


def _names_someone(text: str) -> bool:
    """Whether a clause refers to a person or the picture (not counting "in person")."""
    return bool(_REFERENT.search(re.sub(r"\bin[- ]person\b", " ", text)))


def is_disclaimer(clause: str) -> bool:
    """Whether one clause states that the answerer cannot or will not judge (a refusal or hedge)."""
    s = _strip_connective(_norm(clause).strip())
    return bool(_APOLOGY.match(s)) or any(p.search(s) for p in _DISCLAIMER_PATTERNS)


def _is_caveat(clause: str) -> bool:
    """A general remark about accuracy or sensitivity that names nobody in the image."""
    s = _norm(clause)
    return bool(_CAVEAT.search(s)) and not _names_someone(s)


def _strip_connective(s: str) -> str:
    return _CONNECTIVE.sub("", s, count=1)


def _clause_comma(body: str) -> Optional[int]:
    """Offset of the comma that ends a leading subordinate clause (list commas are skipped), or None."""
    for m in re.finditer(r",\s*", body):
        nxt = body[m.end():].split(",")[0]
        if len(nxt.split()) >= 3 and not re.match(r"(?:or|and|nor)\b", nxt, re.I):
            return m.start()
    return None


def _segment_kind(lead: str, body: str) -> Tuple[str, int]:
    """``(kind, offset in body where the kept text starts)`` for one normalised segment.

    kind ∈ disclaimer, hedged (a hedge intro cut off), offer, content; a dropped segment keeps nothing (-1).
    """
    bare = _strip_connective(body.strip())
    if _APOLOGY.match(bare):
        return "disclaimer", -1
    if is_disclaimer(body):
        sub = _SUBORDINATE.match(body.strip()) or _SUBORDINATE.match(bare)
        comma = _clause_comma(body) if sub else None
        if comma is not None and not is_disclaimer(body[comma + 1:]) and is_disclaimer(body[:comma]):
            return "hedged", _after_lead_in(body, _skip(body, comma + 1))  # only the hedge intro goes
        return "disclaimer", -1
    if _CONCESSIVE.match(bare):
        comma = _clause_comma(body)
        if comma is not None and _is_caveat(body[:comma]):
            return "hedged", _skip(body, comma + 1)
    if lead and _CONCESSIVE_LEAD.match(lead.strip()) and _is_caveat(body):
        return "disclaimer", -1  # a trailing ", though an accurate assessment needs ..."
    if _LEAD_IN.match(bare):
        return "content", _after_lead_in(body, 0)
    if _OFFER.match(bare):
        return "offer", -1
    return "content", 0


def _skip(text: str, at: int) -> int:
    """``at`` moved past spaces and commas."""
    while at < len(text) and text[at] in " ,":
        at += 1
    return at


def _after_lead_in(body: str, at: int) -> int:
    """Offset past a connective + "I can tell you that" starting at ``at`` (the answer after it stays)."""
    rest = body[at:]
    bare = _strip_connective(rest.strip())
    lead_in = _LEAD_IN.match(bare)
    return at + len(rest) - len(bare) + lead_in.end() if lead_in else at


def _segments(core: str) -> List[Tuple[int, int, int]]:
    """``[(lead start, body start, body end), ...]`` covering ``core``; the first lead is empty."""
    out, lead, start = [], 0, 0
    for m in _BOUNDARY.finditer(core):
        if m.start() == 0 or m.end() == len(core):
            continue
        out.append((lead, start, m.start()))
        lead, start = m.start(), m.end()
    out.append((lead, start, len(core)))
    return out


def _clean_sentence(sentence: str) -> Tuple[bool, str]:
    """``(had a disclaimer, what is left)`` for one sentence (kept verbatim when nothing goes).

    Rules read the normalised sentence (quotes blanked before the end mark is cut, so a quoted "Sorry." stays
    quoted); the kept text is cut from the original at the same offsets.
    """
    normed = _norm(sentence)
    end = _END.search(normed)
    stop, mark = (end.start(), sentence[end.start():]) if end else (len(sentence), "")
    parts = []
    for lead, start, stop_ in _segments(normed[:stop]):
        kind, at = _segment_kind(normed[lead:start], normed[start:stop_])
        if kind == "content" and at == 0 and _is_caveat(normed[start:stop_]):
            kind = "content?"  # commentary if the sentence holds a disclaimer
        parts.append((lead, start, stop_, kind, at))
    had = any(kind in ("disclaimer", "hedged") for *_, kind, _ in parts)
    keep = ("content", "hedged") + (() if had else ("content?",))
    if all(kind in ("content", "content?") and at == 0 for *_, kind, at in parts) and not had:
        return had, sentence
    kept: List[str] = []
    for lead, start, stop_, kind, at in parts:
        if kind in keep and sentence[start + at:stop_].strip():
            kept.append(sentence[start + at:stop_] if not kept else sentence[lead:start] + sentence[start + at:stop_])
    if not kept:
        return had, ""
    return had, _tidy("".join(kept).rstrip(" ,;:") + (mark or "."))


def _tidy(text: str) -> str:
    """Drop a leading connective and capitalise the first letter."""
    text = text.strip()
    cut = len(text) - len(_strip_connective(_norm(text)))
    text = text[cut:]
    return text[:1].upper() + text[1:]


def _is_commentary(sentence: str) -> bool:
    """A sentence about accuracy or sensitivity in general (dropped only in answers that hold a disclaimer)."""
    s = _strip_connective(_norm(sentence).strip())
    return bool(_CAVEAT_OPENER.match(s) and _CAVEAT.search(s)) or _is_caveat(sentence)


def _hinted(normed: str) -> bool:
    """Whether a normalised sentence holds a word that some disclaimer rule needs."""
    return any(stem in normed for stem in _HINT_STEMS) or not _HINT_WORDS.isdisjoint(_WORD.findall(normed))


def _has_disclaimer(sentence: str) -> bool:
    """Whether a sentence holds a disclaimer, a hedge or a caveat opener (the prefilter skips most sentences)."""
    s = _norm(sentence)
    if not _hinted(s):
        return False
    return bool(_CAVEAT_OPENER.match(s.strip()) and _CAVEAT.search(s)) or _clean_sentence(sentence)[0]


def _sentences(text: str) -> List[Tuple[str, str]]:
    """``[(separator after it, sentence), ...]`` of a stripped answer."""
    out, start = [], 0
    for m in _SENTENCE.finditer(text):
        out.append((m.group(0), text[start:m.start()]))
        start = m.end()
    out.append(("", text[start:]))
    return [(sep, s) for sep, s in out if s.strip()]


def classify_answer(text: str) -> Tuple[str, str]:
    """``("ok" | "stripped" | "refusal", text to keep)`` for one assistant answer."""
    sentences = _sentences(text.strip())
    if not any(_has_disclaimer(s) for _, s in sentences):
        return "ok", text  # kept byte for byte
    cleaned = [_clean_sentence(s) for _, s in sentences]
    kept: List[str] = []
    seps: List[str] = []  # the breaks since the last kept sentence; the widest one joins (paragraphs stay)
    for (after, sentence), (had, rest) in zip(sentences, cleaned):
        if not rest or (not had and _is_commentary(sentence)):
            seps.append(after)
            continue
        dropped_before = len(seps) > 1 or not kept and bool(seps)
        sep = max(seps, key=lambda x: x.count("\n")) if seps else ""
        kept.append((sep if kept else "") + (_tidy(rest) if dropped_before or rest != sentence else rest))
        seps = [after]
    rest = "".join(kept)
    if len(rest.split()) >= MIN_KEPT_WORDS:
        return "stripped", rest
    return "refusal", ""


def is_refusal(text: str) -> bool:
    """Whether an answer is a refusal once disclaimers are removed (used by ``stats``)."""
    return classify_answer(text)[0] == "refusal"


def score_labelled(examples: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Refusal precision/recall and cleaned-text exactness of :func:`classify_answer` on labelled answers.

    Each example has ``answer``, ``label`` ("refusal" | "answer") and, when the cleaner should change the
    answer, ``cleaned`` (the expected text; absent means "kept verbatim"). A refusal is the positive class.
    """
    counts = {"n": 0, "tp": 0, "fp": 0, "fn": 0, "tn": 0, "hedged": 0, "hedged_exact": 0, "verbatim": 0,
              "verbatim_exact": 0}
    errors: List[Dict[str, Any]] = []
    for k, ex in enumerate(examples):
        if ex.get("label") not in ("refusal", "answer") or not isinstance(ex.get("answer"), str):
            raise ValueError(f"labelled example #{k} ({ex.get('id', '?')}): needs a string 'answer' and 'label' "
                             f"'refusal' or 'answer'")
        verdict, text = classify_answer(ex["answer"])
        said, truth = verdict == "refusal", ex["label"] == "refusal"
        counts["n"] += 1
        counts[("tp" if truth else "fp") if said else ("fn" if truth else "tn")] += 1
        expected = ex.get("cleaned", ex["answer"])
        exact = not said and text == expected
        if not truth:
            group = "hedged" if expected != ex["answer"] else "verbatim"
            counts[group] += 1
            counts[group + "_exact"] += exact
        if said != truth or (not truth and not exact):
            errors.append({"id": ex.get("id", k), "label": ex["label"], "verdict": verdict, "answer": ex["answer"],
                           "got": text, "expected": None if truth else expected})
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    counts["precision"] = tp / (tp + fp) if tp + fp else 1.0
    counts["recall"] = tp / (tp + fn) if tp + fn else 1.0
    return {**counts, "errors": errors}


def _dedupe_key(raw: Dict[str, Any]) -> str:
    turns = " | ".join(f"{t.get('from')}:{' '.join(str(t.get('value')).lower().split())}"
                       for t in raw["conversations"])
    return hashlib.sha1(f"{os.path.normpath(str(raw.get('image')))}\0{turns}".encode("utf-8")).hexdigest()


def clean_record(raw: Any) -> Tuple[str, Any, int]:
    """``(outcome, record, stripped answers)``; outcome ∈ ok, refusal, passthrough."""
    turns = raw.get("conversations") if isinstance(raw, dict) else None
    if not isinstance(turns, list) or len(turns) % 2 or not all(isinstance(t, dict) for t in turns):
        return "passthrough", raw, 0
    kept: List[Dict[str, Any]] = []
    stripped = 0
    for q, a in zip(turns[0::2], turns[1::2]):
        if not isinstance(a.get("value"), str):
            return "passthrough", raw, 0
        verdict, text = classify_answer(a["value"])
        if verdict == "refusal":
            continue
        if verdict == "stripped":
            stripped += 1
            a = dict(a, value=text)
        moved = not kept and q is not turns[0] and "<image>" in str(turns[0].get("value", ""))
        if moved and isinstance(q.get("value"), str):
            q = dict(q, value="<image>\n" + q["value"])  # the image token follows the first kept question
        kept += [q, a]
    if not kept:
        return "refusal", None, 0
    out = copy.copy(raw)
    out["conversations"] = kept
    return "ok", out, stripped


class SectionWriter:
    """Streams records out in the input's layout (JSON list, or section dict)."""

    def __init__(self, path: str, kind: str) -> None:
        self.fp = open(path, "w", encoding="utf-8")
        self.kind, self.section, self.first = kind, None, True
        self.fp.write("[" if kind == "array" else "{")

    def start_section(self, key: str) -> None:
        if self.section is not None:
            self.fp.write("\n]")
        self.fp.write(("" if self.section is None else ",") + f"\n{json.dumps(key, ensure_ascii=False)}: [")
        self.section, self.first = key, True

    def write(self, raw: Any) -> None:
        self.fp.write(("\n" if self.first else ",\n") + json.dumps(raw, ensure_ascii=False))
        self.first = False

    def close(self) -> None:
        if self.kind == "object" and self.section is not None:
            self.fp.write("\n]")
        self.fp.write("\n]\n" if self.kind == "array" else "\n}\n")
        self.fp.close()


def raw_section_keys(ann: AnnFile) -> Dict[str, str]:
    """Trimmed section name → the key as written in the file (trailing spaces kept)."""
    return {key.strip(): key for key, _ in iter_sections(ann.path)}


def clean_file(ann: AnnFile, out_path: str, prompt_sections: Tuple[str, ...] = ("Pre-Prompt",)) -> Dict[str, Any]:
    """Write the cleaned copy of ``ann`` to ``out_path``; returns the per-section report."""
    if os.path.abspath(out_path) == os.path.abspath(ann.path):
        raise SystemExit(f"clean never modifies its input: choose an output other than {ann.path}")
    report: Dict[str, Dict[str, int]] = {s: _empty() for s in sections_of(ann)}
    raw_keys = raw_section_keys(ann) if ann.kind == "object" else {}
    seen: set = set()
    writer = SectionWriter(out_path, ann.kind)
    current: Optional[str] = None
    try:
        for section, _, raw in progress(iter_file(ann), f"clean {ann.label}"):
            if ann.kind == "object" and section != current:
                open_sections_until(writer, report, raw_keys, current, section)
                current = section
            _clean_one(raw, section, report[section], seen, writer, prompt_sections)
        if ann.kind == "object":
            open_sections_until(writer, report, raw_keys, current, None)
    finally:
        writer.close()
    return {"input": ann.path, "output": out_path, "sections": report, "totals": _totals(report)}


def open_sections_until(writer: SectionWriter, report: Dict[str, Any], raw_keys: Dict[str, str], current: Optional[str],
                         target: Optional[str]) -> None:
    """Open every section after ``current`` up to ``target`` (so empty sections are written too)."""
    names = list(report)
    start = names.index(current) + 1 if current is not None else 0
    stop = names.index(target) + 1 if target is not None else len(names)
    for name in names[start:stop]:
        writer.start_section(raw_keys.get(name, name))


def _empty() -> Dict[str, int]:
    return {"records": 0, "kept": 0, "dropped_refusal": 0, "dropped_duplicate": 0, "stripped_answers": 0,
            "passthrough": 0}


def _clean_one(raw: Any, section: str, row: Dict[str, int], seen: set, writer: SectionWriter,
               prompt_sections: Tuple[str, ...]) -> None:
    row["records"] += 1
    outcome, rec, stripped = ("passthrough", raw, 0) if is_prompt_section(section, prompt_sections) \
        else clean_record(raw)
    if outcome == "refusal":
        row["dropped_refusal"] += 1
        return
    if outcome == "ok":
        key = _dedupe_key(rec)
        if key in seen:
            row["dropped_duplicate"] += 1
            return
        seen.add(key)
    else:
        row["passthrough"] += 1
    row["stripped_answers"] += stripped
    row["kept"] += 1
    writer.write(rec)


def _totals(report: Dict[str, Dict[str, int]]) -> Dict[str, int]:
    totals = _empty()
    for row in report.values():
        for k, v in row.items():
            totals[k] += v
    return totals


def report_table(result: Dict[str, Any]) -> str:
    """The per-section kept/dropped table."""
    rows = [[s or "(all)", r["records"], r["kept"], r["dropped_refusal"], r["dropped_duplicate"],
             r["stripped_answers"], r["passthrough"]] for s, r in result["sections"].items()]
    t = result["totals"]
    rows.append(["TOTAL", t["records"], t["kept"], t["dropped_refusal"], t["dropped_duplicate"],
                 t["stripped_answers"], t["passthrough"]])
    return format_table(rows, ["section", "records", "kept", "refusals", "duplicates", "stripped", "passthrough"])
