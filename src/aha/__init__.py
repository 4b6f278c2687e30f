"""aha-countdown: GRPO on the Countdown game, reproducing DeepSeek-R1's "aha moment"."""

__version__ = "0.1.0"
