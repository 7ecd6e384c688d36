"""V2's selection: the student's IFD / r-IFD scoring and its tables."""
