"""From a landing folder to raw pairs: discovery confined to the day folder, safe fetches,
decoding, captions, licenses.
"""
