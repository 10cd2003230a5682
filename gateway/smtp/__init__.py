"""Wire values, no I/O: replies, addresses, commands, DATA framing, SASL encodings."""
