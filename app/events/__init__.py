"""Events out: the outbox every state change writes, its public order, and its readers."""
