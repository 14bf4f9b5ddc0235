"""Recipes: short scripts wiring the library's stages for one kind of data each. No logic of their own."""
