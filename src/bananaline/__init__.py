"""bananaline: dependable image generation with Google's Nano Banana models."""
