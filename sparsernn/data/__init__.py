"""Data sets: text corpora for language modelling."""
