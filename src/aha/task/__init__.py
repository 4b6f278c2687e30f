"""The Countdown task itself, pure Python (no torch): game and solver, generator, prompt,
rewards, behaviours, metrics, audit."""
