"""The prober: send queries at a polite rate and keep every reply to each of them."""
