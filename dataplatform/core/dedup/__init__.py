"""Global deduplication: SHA-256, perceptual hashes and their Hamming index, the semantic
(embedding) index.
"""
