"""Constants shared by data, model and training code (defined once)."""

# Label value that the loss ignores: every position whose aligned loss mask is 0.
IGNORE_INDEX = -100
