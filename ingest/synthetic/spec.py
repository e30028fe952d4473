"""What the synthetic corpus looks like: rates, bitrates, names, class shares (shared by its modules)."""

from __future__ import annotations


SR = 24000  # LAION's clips were generated at 24 kHz
MELD_SR = 48000  # MELD's AAC tracks are 48 kHz
MAX_S, MIN_S = 8.0, 0.5
NOISE_FLOOR = 7e-4  # room noise relative to the clip's peak
MP3_BITRATE = 96000  # at 48 kb/s LAME blanks quiet high bands: a codec fingerprint a model learns
AAC_BITRATE_PER_CHANNEL = 64000  # at 32k the codec darkens the audio enough to halve LAION->MELD transfer
TAR_MTIME = 1733011200  # 2024-12-01: fixed, so tars are byte-identical across runs

DEFAULT_CLASSES = ("Elation", "Anger", "Sadness", "Fear", "Contentment", "Astonishment/Surprise", "Disgust",
                   "Contemplation", "Fatigue/Exhaustion")
EXTRA_TAR = "ADDITONAL_STUFF_voice_acting_outputs-alloy-emotion-prompts.tar"  # the hub's spelling
UNKNOWN_PROMPT_TAR = "en_alloy_intense_boredom_tedium_and_monotony.tar"
MELD_FOLDERS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}
MELD_HEADER = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID", "Season",
               "Episode", "StartTime", "EndTime"]
MELD_PROFILE = {"joy": "Elation", "anger": "Anger", "sadness": "Sadness", "fear": "Fear",
                "surprise": "Astonishment/Surprise", "disgust": "Disgust", "neutral": "Contemplation"}
# MELD train's emotion counts (README): neutral is ~47%.
MELD_SHARES = {"anger": 1109, "disgust": 271, "fear": 268, "joy": 1743, "neutral": 4710, "sadness": 683,
               "surprise": 1205}
CP1252_READABLE = {"\x85": "...", "\x91": "'", "\x92": "'", "\x93": '"', "\x94": '"', "\x96": "-", "\x97": "--",
                   "\xa0": " "}
