"""Preference data without human raters: sample candidates, let an annotator judge them, write training tables."""
