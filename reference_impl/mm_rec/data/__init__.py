"""Tokenizer, data set and loaders for the reference trainer."""
