"""Synthetic text: transcripts (only about a third reveal the emotion), captions derived from the
realised prosody, and Gemini-style annotations with per-emotion intensity tags."""

from __future__ import annotations


import numpy as np

from lake.taxonomy import EMONET_CATEGORIES
from ingest.synthetic.spec import MAX_S
from ingest.synthetic.voice import Cues, Voice, syllables


NEUTRAL_EN = [
    "I put the keys on the table next to the door.", "The meeting starts at nine tomorrow morning.",
    "We need to buy milk, bread and a few apples.", "She said the train would be a little late today.",
    "The report is on the second shelf in my office.", "Turn left at the corner and walk two more blocks.",
    "I think the package arrives on Thursday.", "He moved to a new apartment last spring.",
    "The weather report says it might rain later.", "Please send me the file when you have a moment.",
    "We watched the whole series over the weekend.", "The store closes at eight on Sundays.",
    "My brother fixed the old bicycle in the garage.", "There are three chairs in the waiting room.",
    "I read that article about the city library.", "The bus usually comes every twenty minutes.",
    "They painted the kitchen a light shade of green.", "Could you hand me the blue folder, please?",
    "The recipe calls for two cups of flour.", "I left my umbrella at the office again.",
    "We talked about the schedule for next week.", "The printer on the third floor is working now.",
    "Our neighbors have a small garden behind the house.", "The museum opens at ten in the morning.",
    "I need to call the dentist about my appointment.", "The river runs right through the middle of town.",
    "He always takes the stairs instead of the elevator.", "This road leads to the old harbor.",
    "The new phone has a larger screen.", "I will be back in about an hour.",
    # conversational ones, with the commas and fillers of dialogue
    "Okay, so, here's the thing.", "Well, I guess we could, um, try that.", "Yeah, no, I get it.",
    "So, uh, are we still on for Friday?", "Right, and then what?", "I mean, it's fine, really.",
    "Wait, which one did you want?", "Hey, do you have a minute?",
]
INTERJECTIONS = ["Oh.", "Okay.", "Really?", "Well.", "Hmm.", "No.", "Right.", "Yes."]
NEUTRAL_DE = [
    "Ich habe die Schlüssel auf den Tisch gelegt.", "Das Treffen beginnt morgen um neun Uhr.",
    "Wir brauchen noch Milch und Brot.", "Der Zug hat heute ein paar Minuten Verspätung.",
    "Der Bericht liegt im zweiten Regal.", "Biegen Sie an der Ecke links ab.",
    "Das Paket kommt wahrscheinlich am Donnerstag.", "Das Museum öffnet um zehn Uhr.",
]
# Sentences that give the emotion away (used in about a third of the clips).
REVEALING_EN = {
    "Elation": ["This is the best day of my life!", "We won, we actually won!", "I'm so happy I could dance!"],
    "Anger": ["I can't believe you did that again!", "Stop lying to me, I'm sick of it!",
              "This is absolutely unacceptable!"],
    "Sadness": ["I miss her so much, it still hurts.", "Nothing has felt right since he left.",
                "I just feel so empty and alone."],
    "Fear": ["Did you hear that? Someone is in the house.", "Please don't hurt me, please.",
             "I'm scared, I don't want to go down there."],
    "Contentment": ["This is nice, just sitting here with a cup of tea.", "I'm really at peace with how things are.",
                    "Everything feels calm and easy today."],
    "Astonishment/Surprise": ["Wait, what? You're kidding me!", "I had no idea, that's unbelievable!",
                              "No way, you did all of this?"],
    "Disgust": ["Ugh, that smell is revolting.", "That's disgusting, get it away from me.",
                "I can't even look at it, it's so gross."],
    "Contemplation": ["I wonder what it would mean if we tried it the other way.",
                      "Let me think about that for a moment.", "Maybe the answer is simpler than we think."],
    "Fatigue/Exhaustion": ["I'm so tired, I can barely keep my eyes open.", "I haven't slept in two days.",
                           "I just need to lie down for a while."],
}
REVEALING_DE = {"Anger": ["Das ist absolut inakzeptabel!"], "Sadness": ["Ich vermisse sie so sehr."],
                "Elation": ["Wir haben gewonnen!"], "Fear": ["Ich habe solche Angst."]}

VALENCE = {"Elation": 3, "Contentment": 2, "Astonishment/Surprise": 1, "Contemplation": 0, "Anger": -2,
           "Sadness": -2, "Fear": -2, "Disgust": -2, "Fatigue/Exhaustion": -1}
RELATED = {
    "Elation": ["Amusement", "Hope/Enthusiasm/Optimism", "Triumph", "Pleasure/Ecstasy"],
    "Anger": ["Impatience and Irritability", "Bitterness", "Contempt", "Malevolence/Malice"],
    "Sadness": ["Disappointment", "Helplessness", "Longing", "Distress"],
    "Fear": ["Distress", "Helplessness", "Astonishment/Surprise"],
    "Contentment": ["Relief", "Thankfulness/Gratitude", "Affection"],
    "Astonishment/Surprise": ["Awe", "Confusion", "Interest", "Elation"],
    "Disgust": ["Contempt", "Sourness", "Anger"],
    "Contemplation": ["Concentration", "Interest", "Doubt", "Longing"],
    "Fatigue/Exhaustion": ["Emotional Numbness", "Sadness", "Helplessness"],
}
_LEVEL = ["No {w} is present.", "Slight {w} is present.", "Moderate {w} is evident.",
          "Strong {w} is clearly expressed.", "Intense {w} dominates the delivery."]


def annotation_tag(category: str) -> str:
    """`Pleasure/Ecstasy` -> `Pleasure_Ecstasy` (the tag spelling this corpus uses)."""
    return category.replace("/", "_").replace(" ", "_")


def make_annotation(category: str | None, cues: Cues, block_text: str, closing: str,
                    rng: np.random.Generator) -> str:
    """Gemini-style text: one `<Tag>N#description</Tag>` line per EmoNet category, Valence
    and Arousal, then the transcription block."""
    related = set(RELATED.get(category, []))
    lines = []
    for cat in EMONET_CATEGORIES:
        if cat == category:
            v = int(rng.choice([2, 3, 3, 4, 4]))
        elif cat in related:
            v = int(rng.choice([0, 1, 2])) if rng.random() < 0.5 else 0
        else:
            v = 1 if rng.random() < 0.04 else 0
        word = cat.lower().replace("/", " or ")
        lines.append(f"<{annotation_tag(cat)}>{v}#{_LEVEL[v].format(w=word)}</{annotation_tag(cat)}>")
    valence = int(np.clip(VALENCE.get(category, 0) + rng.integers(-1, 2), -3, 3))
    arousal = int(np.clip(round((cues.rate - 2.5) / 1.0 + cues.loud_db / 6), 0, 4))
    tone = "positive" if valence > 0 else "negative" if valence < 0 else "neutral"
    lines.append(f"<Valence>{valence}#The speaker sounds {tone}.</Valence>")
    lines.append(f"<Arousal>{arousal}#Arousal level {arousal} of 4.</Arousal>")
    lines.append(f"<transcription_start>{block_text}{closing}")
    return "\n".join(lines)


def make_caption(cues: Cues, voice: Voice, realised: dict) -> str:
    """Words for the voice and delivery, from the clip's own synthesis parameters: informative
    about the prosody, but it never names the class."""
    level = cues.f0_st
    pitch = "low" if level < -1.5 else "high" if level > 2.5 else "medium"
    contour = ("flat, monotone" if cues.range_st < 1.5 else "gently varying" if cues.range_st < 3
               else "lively" if cues.range_st < 5 else "highly animated")
    pace = "slowly" if cues.rate < 3.4 else "quickly" if cues.rate > 4.8 else "at a moderate pace"
    loud = " and loudly" if cues.loud_db > 3 else " and softly" if cues.loud_db < -3 else ""
    quality = ("breathy" if cues.breath > 0.3 else "tense, pressed" if cues.tension > 0.7
               else "relaxed" if cues.tension < 0.3 else "clear")
    tone = "bright" if cues.tension > 0.6 else "dark" if cues.tension < 0.3 else "warm"
    rough = cues.jitter > 0.02 or cues.shimmer > 0.1
    deep = "deep " if voice.gender == "male" and voice.f0 < 110 else ""
    text = (f"A {deep}{voice.gender} voice speaks {pace}{loud} with a {pitch}, {contour} pitch "
            f"and a {quality}, {tone} tone.")
    extra = []
    if rough:
        extra.append("The voice sounds slightly rough and creaky")
    if cues.tremor_st > 0.3:
        extra.append("there is a noticeable tremble in the voice")
    if cues.pause > 0.1:
        extra.append("the speech has frequent pauses")
    if realised.get("rising_end"):
        extra.append("it ends on a rising intonation")
    if extra:
        text += " " + "; ".join(extra)[0].upper() + "; ".join(extra)[1:] + "."
    return text + " The recording is clean, with no background noise."


def pick_text(rng: np.random.Generator, category: str, lang: str, rate: float, reveal_p: float = 0.35,
              max_s: float = MAX_S) -> str:
    """1-3 sentences that fit in `max_s` at `rate`; one gives the emotion away with chance `reveal_p`."""
    if rng.random() < 0.08:
        return str(rng.choice(INTERJECTIONS))
    neutral = NEUTRAL_DE if lang == "de" and rng.random() < 0.5 else NEUTRAL_EN
    revealing = (REVEALING_DE if lang == "de" and rng.random() < 0.5 else REVEALING_EN).get(category, [])
    budget = 0.85 * (max_s - 0.5) * rate
    parts: list[str] = []
    if revealing and rng.random() < reveal_p:
        parts.append(str(rng.choice(revealing)))
    for _ in range(int(rng.integers(0, 2) if parts else rng.integers(1, 3))):
        s = str(rng.choice(neutral))
        if len(syllables(" ".join(parts + [s]))) > budget:
            break
        parts.append(s)
    if not parts:
        parts.append(str(rng.choice(neutral)))
    rng.shuffle(parts)
    return " ".join(parts)
