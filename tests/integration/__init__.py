"""Integration tests with real cluster software (the ocf:heartbeat:exportfs agent)."""
