"""Deterministic split assignment by a hash of the clip key.

A clip's split depends only on its key and the fractions, never on read order or
on which other clips exist, so a re-ingest (or an ingest of a superset) puts every
clip in the same split. MELD keeps its official train/dev/test instead.
"""

from __future__ import annotations

import hashlib

from lake.errors import LakeError

DEFAULT_VAL_FRACTION = 0.02
DEFAULT_TEST_FRACTION = 0.02
_SALT = b"emolake-split-v1:"

VALIDATION_SPLITS = ("val", "dev")


def unit_interval(key: str) -> float:
    """A uniform number in [0, 1) from the key (first 8 bytes of blake2b).

    Any str hashes, a key that is not valid UTF-8 too (a tar member name of another encoding
    arrives with lone surrogates): `surrogatepass` leaves valid text's bytes as UTF-8's, so no
    split moves, and gives the others bytes of their own instead of an exception."""
    digest = hashlib.blake2b(_SALT + key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def assign_split(key: str, val_fraction: float = DEFAULT_VAL_FRACTION,
                 test_fraction: float = DEFAULT_TEST_FRACTION) -> str:
    """'test' for the first `test_fraction` of the hash range, then 'val', then 'train'."""
    check_fractions(val_fraction, test_fraction)
    u = unit_interval(key)
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise LakeError(
            f"split fractions val={val_fraction} test={test_fraction}: each must be in [0, 1) "
            "and together below 1"
        )


def validation_split(splits) -> str:
    """The split used for model selection: 'val' (hash splits) or 'dev' (MELD)."""
    for name in VALIDATION_SPLITS:
        if name in splits:
            return name
    raise LakeError(f"no validation split in this set (has {', '.join(sorted(splits)) or 'none'}); "
                    "expected one of: " + ", ".join(VALIDATION_SPLITS))
