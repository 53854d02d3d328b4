"""One-off studies: each answered a question once (experiments/README.md lists the answers)."""

# Imported first so that the package's OpenMP setting is in place before a study imports torch.
import discourse_rl  # noqa: F401
