"""One-off studies: each answered a question once (experiments/README.md lists the answers)."""
