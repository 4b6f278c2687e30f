"""The embedded tiny model's offline pieces: warm-start traces and the committed artifact."""
