"""Board profiles and hardware-in-the-loop scripts."""
