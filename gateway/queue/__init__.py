"""Store-and-forward: the spool, enqueue, the delivery runner, backoff, bounces."""
