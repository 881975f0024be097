"""The comparison apps of the end-to-end benchmark (H, D, R, and F with an OTel SDK)."""
