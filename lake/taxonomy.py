"""Label taxonomies: the EmoNet-Voice categories behind LAION's Got Talent, MELD's 7 emotions,
and the mapping from a LAION tar name's emotion prompt to a canonical category.

A LAION tar is named `{lang}_{voice}_intense_{prompt words}[_vocalbursts_fixed].tar`, e.g.
`de_alloy_intense_anger_rage_fury_hatred_and_annoyance_vocalbursts_fixed.tar`. Its class
comes from the words of the prompt, not from their position (the first word is often
not the category: `lighthearted` -> Amusement, `physical` -> Pain, `sympathy` -> Affection):
each category has cue words (those of its published prompt), and the prompt maps to the
one category matching most of its words. A prompt with no clear winner maps to nothing
and is reported with its tar names, so the taxonomy can be fixed in one go.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from lake.errors import LakeError

# The 40 EmoNet-Voice categories in their published order, each with the emotion prompt
# used in the tar names (laion/laions_got_talent_raw, laion/laions_got_talent).
EMONET_PROMPTS: dict[str, str] = {
    "Amusement": "lighthearted_fun_amusement_mirth_joviality_laughter_and_playfulness",
    "Elation": "happiness_excitement_joy_exhilaration_delight_jubilation_and_bliss",
    "Pleasure/Ecstasy": "ecstasy_pleasure_bliss_rapture_and_beatitude",
    "Contentment": "contentment_relaxation_peacefulness_calmness_satisfaction_and_serenity",
    "Thankfulness/Gratitude": "thankfulness_gratitude_appreciation_and_gratefulness",
    "Affection": "sympathy_compassion_warmth_trust_and_tenderness",
    "Infatuation": "infatuation_having_a_crush_romantic_desire_and_butterflies_in_the_stomach",
    "Hope/Enthusiasm/Optimism": "hope_enthusiasm_optimism_anticipation_and_courage",
    "Triumph": "triumph_and_feelings_of_superiority",
    "Pride": "pride_dignity_self-confidence_and_honor",
    "Interest": "interest_fascination_curiosity_and_intrigue",
    "Awe": "awe_wonder_and_an_awestruck_feeling",
    "Astonishment/Surprise": "astonishment_surprise_amazement_and_shock",
    "Concentration": "concentration_focus_engrossment_and_absorption",
    "Contemplation": "contemplation_reflection_meditation_and_pondering",
    "Relief": "relief_solace_comfort_and_liberation",
    "Longing": "yearning_longing_and_craving_with_wistfulness",
    "Teasing": "teasing_bantering_and_playful_mocking",
    "Impatience and Irritability": "impatience_irritability_restlessness_and_short-temperedness",
    "Sexual Lust": "sexual_lust_and_carnal_desire",
    "Doubt": "doubt_distrust_suspicion_skepticism_and_uncertainty",
    "Fear": "fear_dread_apprehension_and_horror",
    "Distress": "distress_worry_anxiety_anguish_and_trepidation",
    "Confusion": "confusion_bewilderment_disorientation_and_perplexity",
    "Embarrassment": "embarrassment_shyness_mortification_and_self-consciousness",
    "Shame": "shame_guilt_remorse_humiliation_and_contrition",
    "Disappointment": "disappointment_regret_and_dismay",
    "Sadness": "sadness_sorrow_grief_melancholy_and_heartache",
    "Bitterness": "bitterness_resentment_acrimony_cynicism_and_rancor",
    "Contempt": "contempt_disdain_loathing_and_detestation",
    "Disgust": "disgust_revulsion_abhorrence_and_loathing",
    "Anger": "anger_rage_fury_hatred_and_annoyance",
    "Malevolence/Malice": "malevolence_spite_sadism_malice_and_schadenfreude",
    "Sourness": "sourness_tartness_and_acidity",
    "Pain": "physical_pain_suffering_torment_and_agony",
    "Helplessness": "helplessness_powerlessness_desperation_and_submission",
    "Fatigue/Exhaustion": "fatigue_weariness_lethargy_and_burnout",
    "Emotional Numbness": "numbness_detachment_insensitivity_and_apathy",
    "Intoxication/Altered States of Consciousness": "intoxication_stupor_altered_perception_and_being_drunk",
    "Jealousy & Envy": "jealousy_envy_and_covetousness",
}
EMONET_CATEGORIES: list[str] = list(EMONET_PROMPTS)

MELD_CLASSES: list[str] = ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]
"""MELD's 7 emotions in alphabetical order (the reference run's order)."""

LANGUAGES = {"en": "en", "english": "en", "de": "de", "german": "de", "es": "es", "spanish": "es",
             "fr": "fr", "french": "fr"}

_STOP = {"and", "a", "an", "the", "in", "of", "with", "being", "having", "feelings", "feeling", "intense"}
_SUFFIXES = ("_vocalbursts_fixed",)


def _words(prompt: str) -> list[str]:
    return [w for w in re.split(r"[_\s,]+", prompt.lower()) if w and w not in _STOP]


_CUES: dict[str, set[str]] = {}
for _cat, _prompt in EMONET_PROMPTS.items():
    _CUES[_cat] = set(_words(_prompt)) | set(_words(_cat.replace("/", " ").replace("&", " ")))


def map_prompt(prompt: str, overrides: dict[str, str] | None = None) -> str | None:
    """The EmoNet category a free-word emotion prompt names, or None if no clear winner.

    `overrides` maps a prompt (as in the tar name) to a category name, for prompts
    the cue words cannot settle.
    """
    if overrides and prompt in overrides:
        return overrides[prompt]
    words = _words(prompt)
    scores = {cat: sum(w in cues for w in words) for cat, cues in _CUES.items()}
    best = max(scores.values())
    if best == 0:
        return None
    winners = [c for c, s in scores.items() if s == best]
    return winners[0] if len(winners) == 1 else None


@dataclass(frozen=True)
class LaionTarName:
    """The parts of a LAION tar name."""

    stem: str
    language: str  # en, de, es, fr (or the raw prefix, lowercased, if unknown)
    voice: str  # lowercased: some tars spell `Nova`
    prompt: str  # the emotion prompt words, without `intense_` and `_vocalbursts_fixed`


def is_extra_tar(name: str) -> bool:
    """`ADDITIONAL_STUFF*` tars (spelled `ADDITONAL_STUFF` on the hub): not emotion prompts."""
    return name.upper().startswith("ADDIT")


def parse_tar_name(name: str) -> LaionTarName | None:
    """Split `{lang}_{voice}_{prompt}.tar`; None when the name does not have that shape."""
    stem = name.rsplit("/", 1)[-1]
    if stem.endswith(".tar"):
        stem = stem[:-4]
    parts = stem.split("_")
    if len(parts) < 3 or is_extra_tar(stem):
        return None
    prompt = "_".join(parts[2:])
    for suffix in _SUFFIXES:
        if prompt.endswith(suffix):
            prompt = prompt[: -len(suffix)]
    if prompt.startswith("intense_"):
        prompt = prompt[len("intense_"):]
    lang = LANGUAGES.get(parts[0].lower(), parts[0].lower())
    return LaionTarName(stem=stem, language=lang, voice=parts[1].lower(), prompt=prompt)


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


_TAG_TO_CATEGORY = {_norm(c): c for c in EMONET_CATEGORIES}
_ANNOTATION_LINE = re.compile(r"<([A-Za-z][^<>#]*?)>\s*(-?\d+(?:\.\d+)?)\s*#")


def parse_annotation_scores(annotation: str) -> dict[str, float]:
    """Per-tag scores from Gemini annotation text: `<Elation>1#Slight elation ...</Elation>`.

    Emotion tags are renamed to their canonical category (tag spellings of multi-word
    categories vary: `Pleasure_Ecstasy`, `Pleasure/Ecstasy`); other tags (Valence,
    Arousal, ...) keep their own name. Unparseable lines are skipped.
    """
    scores: dict[str, float] = {}
    for tag, value in _ANNOTATION_LINE.findall(annotation or ""):
        tag = tag.strip()
        if tag.lower().startswith("transcription"):
            continue
        scores[_TAG_TO_CATEGORY.get(_norm(tag), tag)] = float(value)
    return scores


_TRANSCRIPT = re.compile(r"<transcription_start>(.*?)(?:</?transcription[^>]*>|$)", re.DOTALL)


def transcript_from_annotation(annotation: str) -> str:
    """The text of the `<transcription_start>` block (its closing tag varies; parse defensively)."""
    m = _TRANSCRIPT.search(annotation or "")
    return " ".join(m.group(1).split()) if m else ""


def ordered_classes(present: set[str], order: list[str] = EMONET_CATEGORIES) -> list[str]:
    """Classes present, in canonical order: ids never depend on which tars were read first."""
    unknown = sorted(present - set(order))
    return [c for c in order if c in present] + unknown


def load_taxonomy_file(path: str) -> list[str]:
    """A taxonomy file: a JSON list of class names, or one name per line."""
    try:
        text = open(path, encoding="utf-8").read()
    except OSError as e:
        raise LakeError(f"{path}: cannot read taxonomy file ({e.strerror})") from None
    try:
        names = json.loads(text)
    except json.JSONDecodeError:
        names = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or not names:
        raise LakeError(f"{path}: a taxonomy file is a JSON list of class names or one name per line")
    if len(set(names)) != len(names):
        raise LakeError(f"{path}: class names repeat")
    return names
