"""Image classification tools (dermoscopy lesions, chest X-ray findings) trained federatedly."""
