"""What the stages will ask the oracle before they run: a stage's requests for a whole dataset (sent ahead, or written to batch files), and what recycling will cost."""
