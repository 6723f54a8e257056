"""Scores written before any filter: CLIP and its heads, every quality scorer, the rules and cuts
that decide on them.
"""
