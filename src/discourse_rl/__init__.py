"""discourse-rl: find and label the discourse elements of student essays."""

__version__ = "0.1.0"
