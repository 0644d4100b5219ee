"""Feedback as data: low-rated queries become golden-set candidates (``golden_candidates``)."""
