"""Label taxonomies: the EmoNet-Voice categories behind LAION's Got Talent, MELD's 7 emotions,
and the mapping from a free-word emotion prompt to a canonical category.

A LAION tar's name carries an emotion prompt (its parsing is the source's:
ingest/sources/laion.py), e.g. `anger_rage_fury_hatred_and_annoyance`. Its class
comes from the words of the prompt, not from their position (the first word is often
not the category: `lighthearted` -> Amusement, `physical` -> Pain, `sympathy` -> Affection):
each category has cue words (those of its published prompt), and the prompt maps to the
one category matching most of its words. A prompt with no clear winner maps to nothing
and is reported with its tar names, so the taxonomy can be fixed in one go.
"""

from __future__ import annotations

import json
import re

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

_STOP = {"and", "a", "an", "the", "in", "of", "with", "being", "having", "feelings", "feeling", "intense"}


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


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


_NORMALISED = {_norm(c): c for c in EMONET_CATEGORIES}


def canonical_category(name: str) -> str | None:
    """The EmoNet category a spelling names (`Pleasure_Ecstasy`, `pleasure/ecstasy`), or None."""
    return _NORMALISED.get(_norm(name))


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
