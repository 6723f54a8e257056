"""Discrete image tokens: the VQ tokenizer, the crop policy, the token budget, WebDataset export."""
