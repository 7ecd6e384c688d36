"""The reflection phases and their tables."""
