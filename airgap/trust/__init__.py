"""Trust: keys, signature policy, freshness and rollback."""
