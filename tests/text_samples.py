"""Small texts shared by tests (a module, not a conftest: conftest names clash across folders)."""

SMALL_TEXT = (
    "The quick brown fox jumps over the lazy dog. Naïve café — “quoted” words, 日本語.\n"
    "Shall I compare thee to a summer's day? Thou art more lovely and more temperate.\n"
    "Rough winds do shake the darling buds of May, and summer's lease hath all too short a date.\n"
)
